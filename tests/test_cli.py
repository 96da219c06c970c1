"""The command line: --set / --params sources, runtime device, renders with progress, kept failed
notebooks, temp-file cleanup, the index, and `render all` skipping notebooks without their data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitlab import cli, params
from traitlab.params import ParamError, parse_set, resolve

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

# %%
y = x * 2
print("y =", y)

# %%
from traitlab import cachelog
cachelog.note("generated answers", read=x, computed=1)  # what a cache lookup notes

# %%
if fail:
    raise ZeroDivisionError(f"boom at x={x}")
print("done")
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throwaway project root holding one tiny notebook (`tinynb`) and its `ci` profile."""
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "params" / "tinynb").mkdir(parents=True)
    (root / "notebooks" / "tinynb.py").write_text(TINY_NB)
    (root / "params" / "tinynb" / "ci.yaml").write_text("x: 3\nfail: false\n")
    (root / "params" / "tinynb" / "default.yaml").write_text("x: 1\nfail: false\n")
    monkeypatch.setattr(params, "PROJECT_ROOT", root)
    monkeypatch.setattr(cli, "PROJECT_ROOT", root)
    monkeypatch.setattr(cli, "build_root", lambda: tmp_path / "build")
    return root


def test_parse_set_reads_yaml_values():
    assert parse_set(["layers=[8,12,16]", "model=qwen", "dtype=bfloat16", "n=3", "f=0.5",
                      "revision=null", "flag=true", "s='1'"]) == {
        "layers": [8, 12, 16], "model": "qwen", "dtype": "bfloat16", "n": 3, "f": 0.5,
        "revision": None, "flag": True, "s": "1"}
    assert parse_set(["runtime.device=cuda:0"]) == {"runtime": {"device": "cuda:0"}}


def test_sources_apply_in_order(tmp_path):
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("layers: [1, 2, 3]\nn_boot: 7\n")
    r = resolve("method_comparison", "ci", mine, {"n_boot": 9})
    assert r.values["layers"] == [1, 2, 3] and r.origin["layers"] == str(mine)
    assert r.values["n_boot"] == 9 and r.origin["n_boot"] == "--set n_boot"
    assert r.origin["model"].endswith("params/method_comparison/ci.yaml")
    assert r.label == "ci"
    only = resolve("method_comparison", None, mine)  # --params alone: over the notebook defaults
    assert only.values == {"layers": [1, 2, 3], "n_boot": 7} and only.label == "mine"


def test_check_with_set_and_params_outside_the_repository(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("model: tiny-llama\nmax_pairs_per_split: 2\n")
    assert cli.main(["check", "method_comparison", "--params", str(mine), "--set", "layers=[0,1]"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"model": "tiny-llama", "max_pairs_per_split": 2, "layers": [0, 1]}


def test_runtime_device_reaches_the_kernel_env(tmp_path):
    mine = tmp_path / "gpu.yaml"
    mine.write_text("runtime: {device: 'cuda:0'}\n")
    r = resolve("method_comparison", "ci", mine)
    assert r.env() == {"TRAITLAB_DEVICE": "cuda:0"}
    assert resolve("method_comparison", "ci", sets={"runtime": {"remote": "local"}}).env() == {
        "TRAITLAB_REMOTE": "local"}
    with pytest.raises(ParamError, match="runtime.device and runtime.device_map both set"):
        resolve("method_comparison", "ci", mine, {"runtime": {"device_map": "auto"}})


def test_traits_dir_reads_ones_own_prompt_sets(tmp_path, capsys):
    src = Path(params.PROJECT_ROOT) / "data" / "traits" / "optimism.jsonl"
    mine = tmp_path / "my_traits"
    mine.mkdir()
    (mine / "cheer.jsonl").write_text(src.read_text())
    argv = ["check", "method_comparison", "--profile", "ci", "--set", "model=tiny-llama",
            "--set", "layers=[0,1]", "--set", "traits=[cheer]", "--set", f"traits_dir={mine}"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["traits_dir"] == str(mine)
    assert cli.main(argv[:-2]) == 2  # the shipped folder has no 'cheer'
    assert "no prompt set for trait 'cheer'" in capsys.readouterr().err


@pytest.mark.parametrize(("notebook", "key"), [("method_comparison", "traits_dir"), ("ratio_zones", "gold_dir")])
def test_a_folder_parameter_is_relative_to_the_params_file(tmp_path, notebook, key):
    (tmp_path / "t").mkdir()
    mine = tmp_path / "p.yaml"
    mine.write_text(f"{key}: t\n")
    assert resolve(notebook, None, mine).values[key] == str(tmp_path / "t")


def test_check_says_where_each_gold_set_comes_from(tmp_path, capsys):
    """With gold_dir, `traitlab check` names each trait's gold file: a file named for another trait
    than meant (gold_hope.jsonl: too far from "optimism" for the near-miss guard) would otherwise read ours silently."""
    from traitlab.judge_power import gold_path

    (tmp_path / "gold_hope.jsonl").write_text(gold_path("optimism").read_text())
    assert cli.main(["check", "ratio_zones", "--profile", "ci", "--set", f"gold_dir={tmp_path}"]) == 0
    err = capsys.readouterr().err
    assert f"gold sets: optimism from ours (data/judge/gold_optimism.jsonl; no {tmp_path}/gold_optimism.jsonl)" in err
    (tmp_path / "gold_hope.jsonl").rename(tmp_path / "gold_optimism.jsonl")
    assert cli.main(["check", "ratio_zones", "--profile", "ci", "--set", f"gold_dir={tmp_path}"]) == 0
    assert f"gold sets: optimism from {tmp_path}/gold_optimism.jsonl" in capsys.readouterr().err


def test_render_shows_progress_and_keeps_it_out_of_the_report(project, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["render", "tinynb", "--profile", "ci", "--out", str(out), "--no-html",
                     "--set", "x=5"]) == 0
    printed = capsys.readouterr().out
    assert "[traitlab] tinynb cell 1/" in printed and "cell 3/" in printed
    nb = json.loads((out / "tinynb.ci.ipynb").read_text())
    text = json.dumps(nb["cells"])
    assert "y = 10" in text and "[traitlab]" not in text
    assert nb["metadata"]["traitlab"]["params"] == {"x": 5, "fail": False}
    assert "--set x" in nb["metadata"]["traitlab"]["sources"]
    assert sorted(p.name for p in out.iterdir()) == ["tinynb.ci.ipynb"]
    # what the kernel read from the caches and computed, kept with the render and shown in the index
    assert nb["metadata"]["traitlab"]["cache"] == {"generated answers": {"read": 5, "computed": 1}}
    assert "computed 1 of 6 looked up: generated answers 1 of 6" in printed
    assert "<td>1 of 6</td>" in cli.write_index(out).read_text()


def test_failed_render_keeps_the_partial_notebook(project, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["render", "tinynb", "--profile", "ci", "--out", str(out), "--set", "fail=true"])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("traitlab")]
    assert rc == 2 and len(ours) == 1 and "Traceback" not in err
    kept = out / "tinynb.ci.failed.ipynb"
    assert "ZeroDivisionError: boom at x=3" in err and str(kept) in err
    cells = json.loads(kept.read_text())["cells"]
    assert any("y = 6" in json.dumps(c.get("outputs", [])) for c in cells)  # ran up to the failure
    assert not (out / "tinynb.ci.ipynb").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # a later success removes the stale .failed notebook; the index never lists it
    assert cli.main(["render", "tinynb", "--profile", "ci", "--out", str(out)]) == 0
    assert not kept.exists()
    assert "tinynb.ci.html" in (out / "index.html").read_text()


def test_index_lists_only_real_reports(tmp_path, capsys):
    meta = {"metadata": {"traitlab": {"profile": "ci", "params": {"model": "m"}}}, "cells": []}
    (tmp_path / "good.ipynb").write_text(json.dumps(meta))
    (tmp_path / ".good.ipynb.abc123.tmp.ipynb").write_text(json.dumps(meta)[:20])
    (tmp_path / ".old.ipynb.x.ipynb").write_text(json.dumps(meta))
    (tmp_path / "good.failed.ipynb").write_text(json.dumps(meta))
    (tmp_path / "broken.ipynb").write_text(json.dumps(meta)[:30])
    page = cli.write_index(tmp_path).read_text()
    assert "good.html" in page
    for name in ("abc123", ".old", "failed", "broken.html"):
        assert name not in page
    assert "broken.ipynb is not a readable notebook" in capsys.readouterr().err


def test_render_all_skips_notebooks_without_their_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path / "empty"))
    done = []
    monkeypatch.setattr(cli, "render", lambda name, *a, **k: done.append(name))
    monkeypatch.setattr(cli, "notebooks", lambda: ["method_comparison", "refusal_dial", "token_dynamics"])
    rc = cli.main(["render", "all", "--profile", "ci", "--no-html", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and done == ["method_comparison"]
    lines = [line for line in out.splitlines() if line.startswith("[traitlab] skipping")]
    assert out.count("refusal_dial needs") == 2  # when skipped, and again in the closing list
    assert len(lines) == 2
    assert "refusal_dial needs" in lines[0] and "xstest (xstest/xstest_prompts.csv)" in lines[0]
    assert "traitlab datasets fetch" in lines[0]
    assert "skipped 2 for missing inputs: refusal_dial, token_dynamics" in out


def test_render_all_skips_a_notebook_that_cannot_run(tmp_path, monkeypatch, capsys):
    done = []
    monkeypatch.setattr(cli, "render", lambda name, *a, **k: done.append(name))
    monkeypatch.setattr(cli, "notebooks", lambda: ["performance", "method_comparison"])
    mine = tmp_path / "p.yaml"
    mine.write_text(f"results_dir: {tmp_path / 'none'}\n")
    monkeypatch.setattr(cli, "resolve", lambda name, prof, par, sets: params.resolve(
        name, prof, mine if name == "performance" else None, sets))
    assert cli.main(["render", "all", "--profile", "ci", "--no-html", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert done == ["method_comparison"] and "skipping performance cannot run: " in out
    assert "make bench" in out


def test_render_all_with_nothing_renderable_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path / "empty"))
    monkeypatch.setattr(cli, "render", lambda name, *a, **k: pytest.fail("rendered"))
    monkeypatch.setattr(cli, "notebooks", lambda: ["refusal_dial"])
    assert cli.main(["render", "all", "--profile", "ci", "--no-html", "--out", str(tmp_path)]) == 1


def test_fetch_verify_calls_the_zoo(monkeypatch, capsys):
    from traitlab import zoo

    calls = []

    def fake(name, **kw):
        calls.append((name, kw))
        return zoo.VerifyReport(name, "repaired" if len(calls) == 1 else "bad", "ok")

    monkeypatch.setattr(zoo, "verify", fake)
    assert cli.main(["fetch", "smollm2-135m-instruct", "--verify"]) == 0
    assert calls == [("smollm2-135m-instruct", {"full": True, "repair": True})]
    assert "smollm2-135m-instruct: gguf repaired" in capsys.readouterr().out
    assert cli.main(["fetch", "smollm2-135m-instruct", "--verify"]) == 1  # could not repair


def test_render_into_reports_refuses_a_dirty_tree(monkeypatch, capsys):
    from traitlab import cli

    calls = []
    monkeypatch.setattr(cli.runinfo, "dirty_files", lambda: ["lib/traitlab/steering.py"])
    monkeypatch.setattr(cli, "render", lambda *a, **k: calls.append(a) or Path("x.ipynb"))
    monkeypatch.setattr(cli, "write_index", lambda *a, **k: None)
    assert cli.main(["render", "method_comparison", "--profile", "ci", "--no-html"]) == 2
    err = capsys.readouterr().err.strip()
    assert "uncommitted change" in err and "--allow-dirty" in err and "\n" not in err
    assert calls == []
    assert cli.main(["render", "method_comparison", "--profile", "ci", "--no-html", "--allow-dirty"]) == 0
    assert len(calls) == 1


def test_dirty_run_record_is_flagged(capsys):
    from traitlab import runinfo

    rec = {"params": {}, "model": None, "packages": {}, "python": "3", "platform": "p",
           "git_commit": "abc+dirty", "date": "d"}
    runinfo.show(rec)
    assert "\x1b[31m" in capsys.readouterr().out


def test_rendered_outputs_do_not_make_the_tree_dirty(tmp_path, monkeypatch):
    """A changed report or golden file is an output, not code: rendering report after report
    from one commit keeps naming that commit; a changed source file still counts."""
    import subprocess

    from traitlab import runinfo

    repo = tmp_path / "repo"
    for d in ("reports", "tests/golden", "lib"):
        (repo / d).mkdir(parents=True)
        (repo / d / "f.txt").write_text("a")
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("add", ".")
    run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    monkeypatch.setattr(runinfo, "PROJECT_ROOT", repo)
    monkeypatch.setattr(runinfo, "IS_CHECKOUT", True)
    (repo / "reports" / "f.txt").write_text("b")
    (repo / "tests" / "golden" / "f.txt").write_text("b")
    assert runinfo.dirty_files() == [] and not runinfo.git_commit().endswith("+dirty")
    (repo / "lib" / "f.txt").write_text("b")
    assert runinfo.dirty_files() == ["lib/f.txt"] and runinfo.git_commit().endswith("+dirty")


def test_warnings_inside_a_rendered_notebook_reach_the_terminal():
    """A damaged cache entry is recomputed with a warning inside the notebook's cell output; the
    CLI repeats each on stderr (at most five, then a count), so they are not missed."""
    from traitlab.cli import notebook_warnings

    stream = lambda text: {"output_type": "stream", "name": "stderr", "text": text}  # noqa: E731
    cells = [{"cell_type": "code", "outputs": [stream(f"a.py:1: UserWarning: entry {i} unreadable\n  warn(x)\n")]}
             for i in range(7)] + [{"cell_type": "code", "outputs": [stream("progress 10%\n")]},
                                   {"cell_type": "markdown", "source": "UserWarning: not output"}]
    got = notebook_warnings({"cells": cells})
    assert got[:2] == ["warning: entry 0 unreadable", "warning: entry 1 unreadable"]
    assert len(got) == 6 and got[-1] == "… and 2 more warnings in the notebook"
    assert notebook_warnings({"cells": cells[7:]}) == []
