"""Vectors as artifacts: save / load with provenance, llama.cpp GGUF round trip, peer
converters on stand-in classes, and the fault-injection cases of issue 16."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from traitlab import vectors as V
from traitlab.directions import Direction, fit_direction
from traitlab.steering import Steer, steered_logits

PROMPTS = ["Tell me about the sea.", "Hi", "What is two plus two, in words?"]


def _direction(d_model: int, site: str = "resid_post@1", seed: int = 0) -> Direction:
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(12, d_model, generator=g) + 0.5, torch.randn(12, d_model, generator=g)
    return fit_direction("probe", pos, neg, seed=seed, site=site, model="tiny-llama",
                         trait="optimism", C=0.5)


@pytest.fixture
def saved(tmp_path):
    d = _direction(64)
    return d, V.save_vector(d, tmp_path / "optimism", params={"layers": [1], "C": 0.5})


# --- save / load -------------------------------------------------------------------------

def test_round_trip_is_exact_with_equal_provenance(saved):
    d, path = saved
    art = V.load_vector(path)
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    assert art.sites == ["resid_post@1"]
    assert torch.equal(art.vectors["resid_post@1"], d.vector)
    assert art.vectors["resid_post@1"].dtype == d.vector.dtype
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert art.provenance() == {k: v for k, v in sidecar.items() if k not in ("sha256", "tensor_file")}
    assert sidecar["sites"]["resid_post@1"]["raw_norm"] == d.raw_norm
    assert sidecar["sites"]["resid_post@1"]["norm"] == pytest.approx(1.0, abs=1e-6)
    assert (sidecar["method"], sidecar["trait"], sidecar["model"], sidecar["seed"]) == \
        ("probe", "optimism", "tiny-llama", 0)
    assert sidecar["params"] == {"layers": [1], "C": 0.5}
    assert sidecar["git_commit"] and sidecar["traitlab_version"] and sidecar["created"]
    back = art.direction()
    assert (back.method, back.site, back.model, back.trait, back.seed, back.raw_norm) == \
        (d.method, d.site, d.model, d.trait, d.seed, d.raw_norm)
    # a second save of the loaded artifact writes the same provenance (save is idempotent)
    again = V.load_vector(V.save_vector(art, path.parent / "again"))
    strip = ("created",)
    assert {k: v for k, v in again.provenance().items() if k not in strip} == \
        {k: v for k, v in art.provenance().items() if k not in strip}


def test_fit_options_are_recorded_when_no_params_given(tmp_path):
    d = _direction(16)
    assert d.params == {"C": 0.5}
    art = V.load_vector(V.save_vector(d, tmp_path / "v"))
    assert art.params == {"C": 0.5}


def test_any_suffix_names_the_same_pair(saved):
    _, path = saved
    for p in (path, path.with_suffix(".json"), path.with_suffix("")):
        assert torch.equal(V.load_vector(p).vectors["resid_post@1"], V.load_vector(path).vectors["resid_post@1"])


def test_multi_layer_artifact_keeps_sites_in_execution_order(tmp_path):
    vs = {"resid_post@1": torch.randn(8), "attn_out@0": torch.randn(8), "resid_pre@1": torch.randn(8)}
    art = V.load_vector(V.save_vector(vs, tmp_path / "multi", method="mean_diff", trait="t"))
    assert art.sites == ["attn_out@0", "resid_pre@1", "resid_post@1"]
    for s, v in vs.items():
        assert torch.equal(art.vectors[s], v)
    assert all(math.isnan(x) for x in art.raw_norms.values())
    with pytest.raises(V.VectorError, match="pass site="):
        art.direction()
    assert art.direction("attn_out@0").site == "attn_out@0"


def test_model_adds_fingerprint_and_is_checked(tiny, tmp_path):
    d = _direction(tiny.d_model)
    art = V.load_vector(V.save_vector(d, tmp_path / "v", model=tiny), model=tiny)
    assert (art.model, art.fingerprint) == (tiny.spec, tiny.fingerprint)
    assert art.direction().fingerprint == tiny.fingerprint


def test_loaded_direction_steers_identically(tiny, tmp_path):
    d = _direction(tiny.d_model, site="resid_pre@1")
    back = V.load_direction(V.save_vector(d, tmp_path / "v", model=tiny), model=tiny)
    ex = [tiny.chat.encode(p) for p in PROMPTS]
    ours = steered_logits(tiny, ex, [Steer(d.site, d.vector, 4.0)])
    loaded = steered_logits(tiny, ex, [Steer(back.site, back.vector, 4.0)])
    via_artifact = steered_logits(tiny, ex, V.load_vector(tmp_path / "v").steers(4.0, tiny))
    plain = steered_logits(tiny, ex, [])
    assert torch.equal(ours, loaded) and torch.equal(ours, via_artifact)
    assert not torch.equal(ours, plain)


def test_save_directions_names_files_by_trait_method_site(tmp_path):
    ds = [_direction(8, "resid_post@1"), _direction(8, "attn_out@0", seed=1)]
    paths = V.save_directions(ds, tmp_path / "vectors", params={"p": 1})
    assert [p.name for p in paths] == ["optimism.probe.resid_post-L1.safetensors",
                                       "optimism.probe.attn_out-L0.safetensors"]
    assert V.load_vector(paths[1]).params == {"p": 1}


def test_dataclass_params_are_recorded(tmp_path):
    @dataclasses.dataclass
    class P:
        layers: list
        model: str = "m"

    art = V.load_vector(V.save_vector({"resid_post@0": torch.ones(2)}, tmp_path / "v", params=P([1, 2])))
    assert art.params == {"layers": [1, 2], "model": "m"}


# --- llama.cpp control-vector GGUF ---------------------------------------------------------

def test_gguf_round_trip_and_format(tmp_path):
    import gguf

    vs = {"resid_post@3": torch.randn(16), "resid_pre@2": torch.randn(16)}  # resid_pre@2 = post@1
    art = V.as_artifact(vs, method="mean_diff", trait="optimism")
    path = V.to_llama_gguf(art, tmp_path / "cv.gguf", coef=0.5, model_hint="llama")
    r = gguf.GGUFReader(str(path))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert bytes(r.fields["controlvector.model_hint"].parts[-1]).decode() == "llama"
    assert int(r.fields["controlvector.layer_count"].parts[-1][0]) == 2
    assert sorted(t.name for t in r.tensors) == ["direction.1", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    back = V.from_llama_gguf(path)
    assert back.sites == ["resid_post@1", "resid_post@3"]
    assert torch.equal(back.vectors["resid_post@1"], (0.5 * vs["resid_pre@2"].double()).float())
    assert torch.equal(back.vectors["resid_post@3"], (0.5 * vs["resid_post@3"].double()).float())
    assert (back.method, back.trait, back.params["coef"]) == ("mean_diff", "optimism", 0.5)


def test_gguf_refuses_sites_llama_cpp_cannot_express(tmp_path):
    with pytest.raises(V.VectorError, match="cannot be expressed"):
        V.to_llama_gguf({"attn_out@3": torch.ones(4)}, tmp_path / "a.gguf")
    with pytest.raises(V.VectorError, match="layer 0"):
        V.to_llama_gguf({"resid_post@0": torch.ones(4)}, tmp_path / "b.gguf")
    with pytest.raises(V.VectorError, match="add them into one"):
        V.to_llama_gguf({"resid_post@3": torch.ones(4), "resid_pre@4": torch.ones(4)}, tmp_path / "c.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- peers, on stand-ins with the real classes' attributes --------------------------------

@dataclasses.dataclass
class FakeSteeringVector:
    layer_activations: dict
    layer_type: str = "decoder_block"


@dataclasses.dataclass
class FakeControlVector:
    model_type: str
    directions: dict


def test_steering_vector_round_trip_on_a_stand_in():
    vs = {"resid_post@2": torch.randn(8), "resid_pre@1": torch.randn(8)}
    sv = V.to_steering_vector(vs, cls=FakeSteeringVector)
    assert sv.layer_type == "decoder_block" and sorted(sv.layer_activations) == [0, 2]
    assert torch.equal(sv.layer_activations[0], vs["resid_pre@1"])
    back = V.from_steering_vector(sv, method="mean_diff")
    assert torch.equal(back.vectors["resid_post@0"], vs["resid_pre@1"])
    assert torch.equal(back.vectors["resid_post@2"], vs["resid_post@2"]) and back.method == "mean_diff"
    attn = V.to_steering_vector({"attn_out@3": torch.ones(4)}, cls=FakeSteeringVector)
    assert attn.layer_type == "self_attn"
    assert V.from_steering_vector(attn).sites == ["attn_out@3"]
    with pytest.raises(V.VectorError, match="one layer_type"):
        V.to_steering_vector({"attn_out@3": torch.ones(4), "mlp_out@3": torch.ones(4)}, cls=FakeSteeringVector)
    with pytest.raises(V.VectorError, match="no traitlab site"):
        V.from_steering_vector(FakeSteeringVector({1: torch.ones(4)}, "input_layernorm"))


def test_control_vector_round_trip_on_a_stand_in():
    vs = {"resid_post@2": torch.randn(8), "resid_post@5": torch.randn(8)}
    cv = V.to_control_vector(vs, model_type="llama", cls=FakeControlVector)
    assert cv.model_type == "llama" and sorted(cv.directions) == [2, 5]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in cv.directions.values())
    back = V.from_control_vector(cv)
    for s, v in vs.items():
        assert torch.equal(back.vectors[s], v)
    with pytest.raises(V.VectorError, match="cannot be expressed"):
        V.to_control_vector({"mlp_out@2": torch.ones(4)}, cls=FakeControlVector)


# --- fault injection -------------------------------------------------------------------------
# Each case: one line, naming the file and the fix.

def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_fault_truncated_tensor_file(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(V.VectorError) as err:
        V.load_vector(path)
    msg = _one_line(err)
    assert str(path) in msg and "truncated or corrupted" in msg and "re-save" in msg


def test_fault_flipped_bytes_in_the_tensor(saved):
    _, path = saved
    blob = bytearray(path.read_bytes())
    blob[-7] ^= 0xFF  # inside the last float: the file still parses, the value is wrong
    path.write_bytes(bytes(blob))
    from safetensors.torch import load_file

    assert load_file(str(path))["resid_post@1"].shape == (64,)  # safetensors alone would accept it
    with pytest.raises(V.VectorError, match="sha256") as err:
        V.load_vector(path)
    assert str(path) in _one_line(err)


def test_fault_sidecar_for_a_different_shape(saved, tmp_path):
    _, path = saved
    other = V.save_vector({"resid_post@1": torch.ones(32)}, tmp_path / "other")
    # a sidecar that describes 32-dim vectors, with the right checksum of our 64-dim file
    rec = json.loads(other.with_suffix(".json").read_text())
    rec["sha256"] = json.loads(path.with_suffix(".json").read_text())["sha256"]
    path.with_suffix(".json").write_text(json.dumps(rec))
    with pytest.raises(V.VectorError, match="do not belong together") as err:
        V.load_vector(path)
    assert str(path.with_suffix(".json")) in _one_line(err)


def test_fault_missing_sidecar(saved):
    _, path = saved
    path.with_suffix(".json").unlink()
    with pytest.raises(V.VectorError, match="sidecar missing") as err:
        V.load_vector(path)
    assert str(path.with_suffix(".json")) in _one_line(err)


def test_fault_sidecar_not_json_and_missing_tensor_file(saved):
    _, path = saved
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(V.VectorError, match="not valid JSON") as err:
        V.load_vector(path)
    _one_line(err)
    path.unlink()
    with pytest.raises(V.VectorError, match="vector file not found") as err:
        V.load_vector(path)
    assert str(path) in _one_line(err)


def test_fault_stale_sidecar_after_a_killed_save(saved):
    """Tensors are written first: a save killed before its sidecar leaves the old sidecar,
    whose checksum no longer matches the new tensors."""
    _, path = saved
    old_sidecar = path.with_suffix(".json").read_text()
    V.save_vector({"resid_post@1": torch.zeros(64)}, path)
    path.with_suffix(".json").write_text(old_sidecar)
    with pytest.raises(V.VectorError, match="does not match"):
        V.load_vector(path)


def test_fault_vector_for_another_width_into_steering(tiny, tmp_path):
    path = V.save_vector({"resid_post@1": torch.ones(tiny.d_model + 3)}, tmp_path / "wide")
    with pytest.raises(V.VectorError, match=f"d_model {tiny.d_model + 3}") as err:
        V.load_vector(path, model=tiny)
    assert str(path) in _one_line(err)
    with pytest.raises(V.VectorError, match="width") as err:
        V.load_vector(path).steers(2.0, tiny)
    assert str(path) in _one_line(err)


def test_fault_vector_beyond_the_models_layers(tiny, tmp_path):
    path = V.save_vector({f"resid_post@{tiny.n_layers + 4}": torch.ones(tiny.d_model)}, tmp_path / "deep")
    with pytest.raises(V.VectorError, match="out of range") as err:
        V.load_vector(path, model=tiny)
    assert str(path) in _one_line(err)


def test_fault_gguf_layer_beyond_the_model(tiny, tmp_path):
    path = V.to_llama_gguf({"resid_post@9": torch.ones(tiny.d_model)}, tmp_path / "cv.gguf")
    with pytest.raises(V.VectorError, match="out of range") as err:
        V.from_llama_gguf(path, model=tiny)
    assert str(path) in _one_line(err)
    with pytest.raises(V.VectorError, match="out of range"):
        V.to_llama_gguf({"resid_post@9": torch.ones(tiny.d_model)}, tmp_path / "x.gguf", model=tiny)


def test_fault_gguf_truncated_or_not_a_control_vector(tmp_path):
    path = V.to_llama_gguf({"resid_post@2": torch.ones(64)}, tmp_path / "cv.gguf")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(V.VectorError, match="not a readable GGUF") as err:
        V.from_llama_gguf(path)
    assert str(path) in _one_line(err)
    import gguf

    model_like = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(model_like), "llama")
    w.add_tensor("direction.1", np.ones(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(V.VectorError, match="not 'controlvector'") as err:
        V.from_llama_gguf(model_like)
    _one_line(err)


def test_fault_direction_without_a_site_or_bad_input(tmp_path):
    with pytest.raises(V.VectorError, match="has no site"):
        V.save_vector(Direction(torch.ones(4), "mean_diff"), tmp_path / "v")
    with pytest.raises(V.VectorError, match="1-D float tensor"):
        V.save_vector({"resid_post@1": torch.ones(2, 4)}, tmp_path / "v")
    with pytest.raises(V.VectorError, match="form '<name>@<layer>'"):
        V.save_vector({"layer12": torch.ones(4)}, tmp_path / "v")
    with pytest.raises(V.VectorError, match="different widths"):
        V.save_vector({"resid_post@1": torch.ones(4), "resid_post@2": torch.ones(5)}, tmp_path / "v")
    assert not list(tmp_path.iterdir())


def test_fault_gguf_direction_zero_or_misnamed(tmp_path):
    import gguf

    for name in ("direction.0", "dir.3"):
        path = tmp_path / f"{name}.gguf"
        w = gguf.GGUFWriter(str(path), "controlvector")
        w.add_tensor(name, np.ones(4, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(V.VectorError, match="llama.cpp would reject") as err:
            V.from_llama_gguf(path)
        assert str(path) in _one_line(err)


# ---- a report's vectors: the fitted-direction log, bundles and publish_vectors ----

def test_fitted_log_bundle_round_trip_and_publish(tmp_path, monkeypatch):
    from traitlab import directions as D
    from traitlab.vectors import VectorError, load_bundle, publish_vectors, save_bundle

    D.fitted(clear=True)
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(6, 5, generator=g) + 1, torch.randn(6, 5, generator=g)
    a = D.fit_direction("mean_diff", pos, neg, site="resid_post@1", trait="t")
    b = D.fit_direction("probe", pos, neg, site="resid_post@2", trait="t")
    D.fit_direction("random", pos, neg, site="resid_post@2", trait="t", seed=7)  # not logged
    logged = D.fitted(clear=True)
    assert [(d.method, d.site) for d in logged] == [("mean_diff", "resid_post@1"), ("probe", "resid_post@2")]
    assert D.fitted() == []

    path = save_bundle(logged, tmp_path / "r.vectors")
    back = load_bundle(path)
    assert torch.equal(back["t/mean_diff/resid_post@1/seed0"].vector, a.vector)
    assert back["t/probe/resid_post@2/seed0"].raw_norm == pytest.approx(b.raw_norm)

    monkeypatch.delenv("TRAITLAB_RECORD_DIR", raising=False)
    assert publish_vectors(logged) is None  # a notebook run by hand writes nothing
    monkeypatch.setenv("TRAITLAB_RECORD_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("TRAITLAB_RECORD_NAME", "demo")
    written = publish_vectors(logged)
    assert written == tmp_path / "out" / "demo.vectors.safetensors" and len(load_bundle(written)) == 2
    assert publish_vectors([]) is None

    # fault injection: flipped bytes and a missing sidecar are one-line errors, never served
    data = bytearray(written.read_bytes())
    data[-3] ^= 0xFF
    written.write_bytes(bytes(data))
    with pytest.raises(VectorError, match="sha256 does not match") as err:
        load_bundle(written)
    assert "\n" not in str(err.value)
    written.with_suffix(".json").unlink()
    with pytest.raises(VectorError, match="missing"):
        load_bundle(written)
