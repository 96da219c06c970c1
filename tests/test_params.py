"""Parameters: YAML profiles match their notebooks, and bad values fail before model work."""

from __future__ import annotations

import dataclasses

import pytest

from traitlab import cli
from traitlab.experiments import PARAMS
from traitlab.params import ParamError, load_profile, notebook_path, parameters_cell, validate
from traitlab.paths import PROJECT_ROOT

NOTEBOOKS = sorted(p.stem for p in (PROJECT_ROOT / "notebooks").glob("*.py"))
PROFILES = sorted((PROJECT_ROOT / "params").glob("*/*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_profile_keys_match_notebook(path):
    declared = parameters_cell(notebook_path(path.parent.name))
    values = load_profile(path.parent.name, path.stem)
    assert set(values) == set(declared), set(values) ^ set(declared)
    validate(PARAMS[path.parent.name], values)  # types and ranges


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_parameters_match_params_dataclass(name):
    declared = parameters_cell(notebook_path(name))
    defaults = PARAMS[name]()
    assert list(declared) == [f.name for f in dataclasses.fields(defaults)]
    assert declared == dataclasses.asdict(defaults)
    for profile in ("default", "ci"):
        assert (PROJECT_ROOT / "params" / name / f"{profile}.yaml").exists()


def _mc(**kw):
    return validate(PARAMS["method_comparison"], kw)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ParamError, match="unknown parameter 'layer'; did you mean 'layers'"):
        _mc(layer=[1])


@pytest.mark.parametrize("kw, msg", [
    ({"layers": "all"}, "should be"),
    ({"n_random_seeds": 2.5}, "should be int"),
    ({"methods": ["probe", "svm"]}, "unknown methods"),
    ({"site": "resid"}, "site 'resid' unknown"),
    ({"position": "first"}, "position 'first' unknown"),
    ({"traits": []}, "traits is empty"),
    ({"acc_threshold": 1.5}, "acc_threshold"),
    ({"dtype": 32}, "should be str"),
])
def test_bad_values(kw, msg):
    with pytest.raises(ParamError, match=msg):
        _mc(**kw)


def test_model_checks_need_no_weights(monkeypatch):
    import traitlab.models as M

    monkeypatch.setattr(M, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ParamError, match="layer 30 out of range; the model has layers 0..29"):
        _mc(model="smollm2-135m-instruct", layers=[0, 30]).check()
    with pytest.raises(ValueError, match="unknown model 'gpt5'"):
        _mc(model="gpt5").check()
    with pytest.raises(ValueError, match="no prompt set for trait 'evil'"):
        _mc(model="tiny-llama", traits=["evil"]).check()
    assert len(_mc(model="tiny-llama").check()) == 2


def test_cli_rejects_bad_profile(tmp_path, monkeypatch, capsys):
    bad = PROJECT_ROOT / "params" / "method_comparison" / "zz_test_bad.yaml"
    bad.write_text("model: tiny-llama\nlayrs: [0]\n")
    try:
        assert cli.main(["check", "method_comparison", "--profile", "zz_test_bad"]) == 2
        assert "did you mean 'layers'" in capsys.readouterr().err
    finally:
        bad.unlink()
    assert cli.main(["check", "method_comparison", "--profile", "nope"]) == 2
    assert "no profile 'nope'" in capsys.readouterr().err
    # a path names the notebook too; an unknown notebook is named before any profile lookup
    assert cli.main(["check", "notebooks/method_comparison.py", "--profile", "ci"]) == 0
    capsys.readouterr()
    assert cli.main(["check", "notebooks/method_comparsion.py", "--profile", "ci"]) == 2
    assert "unknown notebook 'method_comparsion'" in capsys.readouterr().err


def _rd(**kw):
    return validate(PARAMS["refusal_dial"], kw)


@pytest.mark.parametrize("kw, msg", [
    ({"alphas": [-2.0, 2.0]}, "alphas = .* has no 0"),
    ({"gen_alphas": [0.0, 5.0]}, "must be a subset of alphas"),
    ({"harmful_sources": ["advbench", "mmlu"]}, "unknown harmful sources"),
    ({"patch_sites": ["resid"]}, "unknown patch sites"),
    ({"n_harmful": 0}, "n_harmful must be >= 1"),
    ({"top_frac": 0.7}, "top_frac"),
])
def test_refusal_dial_bad_values(kw, msg):
    with pytest.raises(ParamError, match=msg):
        _rd(**kw)


def test_refusal_dial_model_checks(monkeypatch, tmp_path):
    with pytest.raises(ParamError, match="steer layer 24 out of range"):
        _rd(steer_layers=[24]).check()
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path))
    with pytest.raises(ValueError, match="TRAITLAB_DATA_ROOT"):
        _rd(model="tiny-llama").check()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_profile_dtypes_and_models_resolve_offline(path):
    """Every shipped profile names dtypes load_model accepts and models that resolve (hub ids are
    left to the notebook's own check, which reads their config)."""
    from traitlab.params import check_dtypes, check_models, resolve

    r = resolve(path.parent.name, path.stem)
    check_dtypes(r)
    check_models(r, dataclasses.asdict(PARAMS[path.parent.name]()))
    assert r.values.get("traits_dir") is None  # shipped profiles use data/traits
