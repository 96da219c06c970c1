"""Fault injection at the command line: bad parameters, bad files, missing data, killed and failing
renders. Every case ends in one line naming the file or key and the fix, or in a correct recovery."""

from __future__ import annotations

import json

import pytest

from traitlab import cli, params
from traitlab.paths import data_root

TINY_NB = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
x = 1
fail = False
die = False

# %%
y = x * 2
print("y =", y)

# %%
if fail:
    raise ZeroDivisionError(f"boom at x={x}")
if die:
    import os
    os._exit(3)
print("done")
'''


def _fails(capsys, argv, *needles):
    """Run the CLI; it must exit 2 with exactly one `traitlab: error:` line holding every needle."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("traitlab: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def yaml_file(tmp_path):
    def make(text, name="mine.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return make


def test_yaml_syntax_error(capsys, yaml_file):
    p = yaml_file("model: tiny-llama\nlayers: [0, 1\nsite: resid_post\n")
    _fails(capsys, ["check", "method_comparison", "--params", p], p, "YAML syntax error", "fix the file")


def test_yaml_not_a_mapping(capsys, yaml_file):
    p = yaml_file("- model\n- layers\n")
    _fails(capsys, ["check", "method_comparison", "--params", p], p, "expected a mapping")


def test_unknown_key_in_a_params_file(capsys, yaml_file):
    p = yaml_file("layrs: [0]\n")
    _fails(capsys, ["check", "method_comparison", "--params", p], p, "'layrs'", "did you mean 'layers'")


def test_unknown_key_in_set(capsys):
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", "n_bot=3"],
           "--set n_bot", "did you mean 'n_boot'")


def test_wrong_type_names_its_source(capsys, yaml_file):
    p = yaml_file("n_boot: lots\n")
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--params", p],
           p, "'n_boot'", "should be int")
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", "layers=all"],
           "--set layers", "should be")


def test_bad_dtype_fails_in_check_not_in_the_kernel(capsys, yaml_file):
    p = yaml_file("dtype: bf16\n")
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--params", p],
           p, "dtype 'bf16'", "bfloat16")
    _fails(capsys, ["check", "judge_calibration", "--profile", "ci", "--set", "judge_dtype=fp32"],
           "--set judge_dtype", "float32")


def test_bad_layer(capsys):
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", "layers=[0,99]"],
           "layer 99 out of range", "params/method_comparison/ci.yaml")


def test_unresolvable_models(capsys, tmp_path):
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", "model=gpt5"],
           "--set model", "unknown model 'gpt5'")
    gguf = tmp_path / "missing.gguf"
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", f"model={gguf}"],
           "--set model", "does not exist")
    _fails(capsys, ["check", "model_chain", "--profile", "ci", "--set", "teacher_model=./nowhere/"],
           "--set teacher_model")


def test_nonexistent_params_path(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    _fails(capsys, ["check", "method_comparison", "--params", str(missing)], str(missing), "does not exist")
    _fails(capsys, ["render", "method_comparison", "--params", str(missing)], str(missing))


@pytest.mark.parametrize("item, needle", [("layers", "expected key=value"),
                                          ("=3", "expected key=value"),
                                          ("layers=[1,2", "is not valid YAML"),
                                          ("model.name=x", "only runtime.<key>")])
def test_bad_set_syntax(capsys, item, needle):
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", item], needle)


def test_bad_runtime_block(capsys, yaml_file):
    p = yaml_file("runtime: {device: gpu0}\n")
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--params", p], p, "runtime.device")
    _fails(capsys, ["check", "method_comparison", "--profile", "ci", "--set", "runtime.gpus=2"],
           "--set runtime", "unknown runtime keys")


def test_missing_traits_dir(capsys, tmp_path):
    _fails(capsys, ["check", "cross_topic", "--profile", "ci", "--set", f"traits_dir={tmp_path}/none"],
           "--set traits_dir", "is not a folder")


def test_missing_gold_dir_and_a_trait_without_gold(capsys, tmp_path):
    _fails(capsys, ["check", "ratio_zones", "--profile", "ci", "--set", f"gold_dir={tmp_path}/none"],
           "--set gold_dir", "is not a folder; give a folder of gold_<trait>.jsonl gold sets")
    _fails(capsys, ["check", "metrics_vs_steering", "--profile", "ci", "--set", f"gold_dir={tmp_path}",
                    "--set", "gold_traits=[optimism, cheer]"],
           "no gold set for ['cheer']", f"write {tmp_path}/gold_cheer.jsonl")


def test_missing_profile_and_notebook(capsys):
    _fails(capsys, ["check", "method_comparison", "--profile", "nope"], "no profile 'nope'", "have ")
    _fails(capsys, ["render", "method_comparsion"], "unknown notebook 'method_comparsion'")


def test_missing_dataset_for_one_notebook(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path))
    _fails(capsys, ["check", "refusal_dial", "--profile", "ci"], "TRAITLAB_DATA_ROOT")


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "params" / "tinynb").mkdir(parents=True)
    (root / "notebooks" / "tinynb.py").write_text(TINY_NB)
    (root / "params" / "tinynb" / "default.yaml").write_text("x: 1\nfail: false\ndie: false\n")
    monkeypatch.setattr(params, "PROJECT_ROOT", root)
    monkeypatch.setattr(cli, "PROJECT_ROOT", root)
    monkeypatch.setattr(cli, "build_root", lambda: tmp_path / "build")
    return root


def test_killed_render_leftovers_are_cleaned_and_never_indexed(tiny_project, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # what a render killed mid-run leaves: atomic temps of the notebook and of its HTML,
    # one of them a truncated notebook
    (out / ".tinynb.ipynb.k1ll3d.tmp").write_text("")
    (out / ".tinynb.ipynb.k1ll3d.tmp.ipynb").write_text('{"cells": [{"cell_ty')
    (out / ".tinynb.html.zz.tmp").write_text("<html")
    cli.write_index(out)  # a truncated temp notebook does not break the index
    assert "k1ll3d" not in (out / "index.html").read_text()
    assert cli.main(["render", "tinynb", "--out", str(out), "--no-html"]) == 0
    printed = capsys.readouterr().out
    assert "removed .tinynb.ipynb.k1ll3d.tmp.ipynb, left by an interrupted render" in printed
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "tinynb.ipynb"]


def test_truncated_report_does_not_break_the_next_render(tiny_project, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.ipynb").write_text('{"metadata": {"traitl')
    assert cli.main(["render", "tinynb", "--out", str(out), "--no-html"]) == 0
    page = cli.write_index(out).read_text()
    assert "tinynb.html" in page and "other.html" not in page
    assert "other.ipynb is not a readable notebook" in capsys.readouterr().err


def test_failing_cell_keeps_failed_notebook(tiny_project, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["render", "tinynb", "--out", str(out), "--set", "fail=true"])
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("traitlab")]
    assert rc == 2 and len(line) == 1 and "Traceback" not in err
    assert "tinynb failed in cell 4 (ZeroDivisionError: boom at x=1)" in line[0]
    assert (out / "tinynb.failed.ipynb").exists()
    assert json.loads((out / "tinynb.failed.ipynb").read_text())["cells"]


def test_dead_kernel_is_one_line_and_keeps_what_ran(tiny_project, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["render", "tinynb", "--out", str(out), "--no-html", "--set", "die=true"])
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("traitlab")]
    assert rc == 2 and len(line) == 1 and "Traceback" not in err, err
    assert "tinynb stopped (DeadKernelError" in line[0] and "tinynb.failed.ipynb" in line[0]
    assert [p.name for p in out.iterdir()] == ["tinynb.failed.ipynb"]


# --- found by a fault sweep: each used to pass `check` ------------------------------------------

@pytest.mark.parametrize("notebook, setting, needles", [
    ("ratio_zones", "n_questions=10000", ("asked for 10000 test questions", "optimism_questions.jsonl has 40")),
    ("sft_dpo_transfer", "n_questions=41", ("asked for 41 test questions",)),
    ("metrics_vs_steering", "n_questions=500", ("asked for 500 test questions",)),
    ("method_comparison", "layers=[1,1]", ("layers must be a list without repeats",)),
])
def test_check_refuses_what_a_render_would_silently_cap_or_repeat(capsys, notebook, setting, needles):
    """More questions than the file holds were capped without a word (while the record still said
    the number asked for); a repeated layer was computed twice."""
    _fails(capsys, ["check", notebook, "--profile", "ci", "--set", setting], *needles)


def test_a_key_repeated_in_a_parameter_file_is_an_error(capsys, tmp_path):
    """YAML keeps the last of two equal keys without a word: `seed: 1` … `seed: 7` ran with 7."""
    f = tmp_path / "p.yaml"
    f.write_text("seed: 1\nn_questions: 4\nseed: 7\n")
    _fails(capsys, ["check", "ratio_zones", "--profile", "ci", "--params", str(f)],
           f"{f}:3:1", "key 'seed' repeated (first on line 1)")


def test_an_out_folder_that_is_a_file_or_cannot_be_made_fails_in_one_line(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    _fails(capsys, ["render", "ratio_zones", "--profile", "ci", "--out", str(f)], f"{f} is a file, not a folder")
    _fails(capsys, ["render", "ratio_zones", "--profile", "ci", "--out", str(f / "below")], "is a file, not a folder")
    _fails(capsys, ["render", "ratio_zones", "--profile", "ci", "--out", "/proc/traitlab-out"],
           "--out /proc/traitlab-out cannot be created", "choose another folder")


@pytest.mark.parametrize("setting, needle", [("n_xstest=100000", "n_xstest 100000 asks for 50000 safe"),
                                             ("n_edge_xstest=1000", "n_edge_xstest 1000 asks for more safe"),
                                             ("n_edge=1000", "n_edge 1000 asks for more EDGE prompts than the 160"),
                                             ("n_edge=3", "n_edge must be >= 4 or null")])
def test_refusal_dial_refuses_more_xstest_prompts_than_exist(capsys, setting, needle):
    if not (data_root() / "xstest").exists():
        pytest.skip("public datasets not found (set TRAITLAB_DATA_ROOT)")
    _fails(capsys, ["check", "refusal_dial", "--profile", "ci", "--set", setting], needle)


def test_questions_file_missing_bad_or_relative(capsys, tmp_path):
    _fails(capsys, ["check", "ratio_zones", "--profile", "ci", "--set", f"questions_file={tmp_path}/none.jsonl"],
           "--set questions_file", "is not a file")
    bad = tmp_path / "qs.jsonl"
    bad.write_text('{"id": "a", "question": "Will it rain?", "split": "test"}\n')
    _fails(capsys, ["check", "ratio_zones", "--profile", "ci", "--set", f"questions_file={bad}"],
           "asked for 4 test questions", str(bad))
    good = tmp_path / "sub" / "qs.jsonl"
    good.parent.mkdir()
    good.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What next for field {i}?", "split": "test"}) + "\n"
                            for i in range(4)))
    mine = tmp_path / "p.yaml"
    mine.write_text("questions_file: sub/qs.jsonl\n")  # read from the parameter file's folder
    assert cli.main(["check", "ratio_zones", "--profile", "ci", "--params", str(mine)]) == 0
    assert json.loads(capsys.readouterr().out)["questions_file"] == str(good)


def test_instructions_file_missing_or_lacking_the_trait(capsys, tmp_path):
    _fails(capsys, ["check", "elicitation", "--profile", "ci", "--set", f"instructions_file={tmp_path}/no.jsonl"],
           "--set instructions_file", "is not a file")
    mine = tmp_path / "sys.jsonl"
    mine.write_text(json.dumps({"trait": "humor", "positive": ["Be funny."], "negative": ["Be dry."]}) + "\n")
    _fails(capsys, ["check", "elicitation", "--profile", "ci", "--set", f"instructions_file={mine}"],
           "no system prompts for 'optimism' in", str(mine))
