"""Beyond one machine: remote (NDIF) and device_map reach nnsight's calls; clear errors offline.

NDIF itself cannot be reached here. nnsight's ``remote="local"`` backend serializes each trace the
way a remote request is shipped and executes it locally, so running our extraction, steering and
monitor through it shows the interventions survive the remote path, with identical results.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from traitlab import models
from traitlab.activations import extract
from traitlab.models import ModelError, load_model
from traitlab.monitor import Watch, monitor
from traitlab.params import ParamError, check_runtime, load_profile, load_runtime
from traitlab.paths import PROJECT_ROOT
from traitlab.sites import Site
from traitlab.steering import Steer, generate_steered


def test_remote_local_simulation_gives_identical_results():
    m = load_model("tiny-llama")
    sim = dataclasses.replace(m, remote="local")
    ex = [m.chat.encode("Hi there", "Hello!"), m.chat.encode("Tell me a story", "Once")]
    sites = [Site("resid_post", 1), Site("attn_out", 0)]
    a = extract(m, ex, sites, position="mean", cache=False, progress=False)
    b = extract(sim, ex, sites, position="mean", cache=False, progress=False)
    for s in sites:
        torch.testing.assert_close(a[s], b[s])
    prompts = [m.chat.encode("Hi there")]
    steer = [Steer(Site("resid_pre", 1), torch.ones(m.d_model), 2.0)]
    assert generate_steered(m, prompts, steer, max_new_tokens=4) == generate_steered(sim, prompts, steer, max_new_tokens=4)
    w = [Watch("w", Site("resid_post", 1), torch.ones(m.d_model))]
    [t1], [t2] = (monitor(x, prompts, w, max_new_tokens=4, stop_at_eos=False) for x in (m, sim))
    assert t1.tokens == t2.tokens
    torch.testing.assert_close(torch.tensor(t1.scores["w@resid_post@1"]), torch.tensor(t2.scores["w@resid_post@1"]))


def test_the_remote_flag_reaches_nnsight(monkeypatch):
    m = dataclasses.replace(load_model("tiny-qwen2"), remote="local")
    seen = []
    real_trace = m.lm.trace

    def spy(*args, **kwargs):
        seen.append(kwargs.get("remote"))
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(m.lm, "trace", spy)
    extract(m, [m.chat.encode("Hi", "Yo")], [Site("resid_pre", 1)], cache=False, progress=False)
    assert seen == ["local"]


def test_remote_errors_are_clear_and_come_before_model_work(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(ModelError, match="NDIF_API_KEY"):
        load_model("meta-llama/Llama-3.1-70B", remote=True)
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    with pytest.raises(ModelError, match="hub models"):
        load_model("smollm2-135m-instruct", remote=True)
    # no network: the hub config cannot be read (huggingface_hub's five retries, without their 23 s of backoff)
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http.time, "sleep", lambda seconds: None)
    with pytest.raises(ModelError, match="cannot reach hub model"):
        load_model("meta-llama/Llama-3.1-70B", remote=True)
    # a hub model whose config is known, but NDIF is unreachable
    monkeypatch.setattr(models, "describe", lambda spec, revision=None: models.ModelInfo(spec, "hub", "llama", 80, 8192))
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")
    with pytest.raises(ModelError, match="cannot reach NDIF at http://127.0.0.1:9"):
        load_model("meta-llama/Llama-3.1-70B", remote=True)


def test_runtime_environment_defaults(monkeypatch):
    monkeypatch.setenv("TRAITLAB_REMOTE", "local")
    monkeypatch.setenv("TRAITLAB_DEVICE_MAP", "cpu")
    m = load_model("tiny-llama")
    assert m.remote == "local" and m.device_map == "cpu" and m.record()["remote"] == "local"
    monkeypatch.setenv("TRAITLAB_REMOTE", "sometimes")
    with pytest.raises(ModelError, match="TRAITLAB_REMOTE"):
        load_model("tiny-llama")


def test_patching_and_sweeps_refuse_remote_models():
    from traitlab.patching import patch_last_k
    from traitlab.sweep import last_token_sweep

    m = dataclasses.replace(load_model("tiny-llama"), remote=True)
    ex = [m.chat.encode("Hello there friend")]
    with pytest.raises(ValueError, match="cannot run remotely"):
        last_token_sweep(m, ex, 1, torch.zeros(1, m.d_model), lambda logits: logits[:, 0])
    with pytest.raises(ValueError, match="cannot run remotely"):
        patch_last_k(m, ex, ex, [Site("resid_pre", 1)], 1, "mean")


def test_profile_runtime_block():
    assert check_runtime({"device_map": "auto"}) == {"device_map": "auto", "remote": False}
    with pytest.raises(ParamError, match="unknown runtime keys"):
        check_runtime({"gpus": 8})
    with pytest.raises(ParamError, match="runtime.remote"):
        check_runtime({"remote": "yes"})
    p = PROJECT_ROOT / "params" / "method_comparison" / "zz_test_runtime.yaml"
    base = (PROJECT_ROOT / "params" / "method_comparison" / "ci.yaml").read_text()
    p.write_text(base + "runtime: {device_map: auto, remote: local}\n")
    try:
        values = load_profile("method_comparison", "zz_test_runtime")
        assert "runtime" not in values  # not a notebook parameter
        assert load_runtime("method_comparison", "zz_test_runtime") == {
            "TRAITLAB_DEVICE_MAP": "auto", "TRAITLAB_REMOTE": "local"}
    finally:
        p.unlink()


def test_shipped_runtime_examples_validate():
    for name in ("llama-3.1-70b-ndif", "gemma-2-27b-multi-gpu"):
        path = PROJECT_ROOT / "params" / "method_comparison" / f"{name}.yaml"
        assert path.exists(), path
        load_profile("method_comparison", name)
        assert load_runtime("method_comparison", name)
