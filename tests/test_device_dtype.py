"""Device and dtype safety: every intervention casts its delta to the activation's device and
dtype where it is applied, so float32 vectors steer half-precision models (and, on a GPU,
CPU vectors steer a CUDA model). Half-precision results agree with float32 within the
dtype's noise; the cast itself is checked exactly against a by-hand addition."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from traitlab.activations import cast_like, extract, to_model
from traitlab.models import load_model
from traitlab.monitor import Watch, monitor
from traitlab.patching import patch_last_k
from traitlab.sites import Site, module_path, resolve
from traitlab.steering import Sampling, Steer, generate, generate_steered, steered_logits
from traitlab.sweep import last_token_sweep, multi_layer_sweep, naive_sweep

PROMPTS = ["Tell me about the sea.", "Hi there", "What is two plus two?"]
HALF = ["bfloat16", "float16"]


def _vec(m, seed=0, scale=3.0):
    return scale * torch.randn(m.d_model, generator=torch.Generator().manual_seed(seed))  # float32


def _half(spec, dtype):
    try:
        m = load_model(spec, dtype=dtype)
        with torch.no_grad():
            m.hf(input_ids=torch.tensor([[1, 5, 6]]))
    except RuntimeError as err:  # a CPU build without this dtype's kernels
        pytest.skip(f"{dtype} does not run on this CPU: {err}")
    return m


@contextmanager
def _add_by_hand(model, site, delta):
    """Reference: a PyTorch hook adding ``delta`` as given at every position of ``site``."""
    mod = resolve(model.hf, module_path(model.arch, site))

    def post(_m, _a, out):
        x = (out[0] if isinstance(out, tuple) else out).clone()
        x += delta
        return (x, *out[1:]) if isinstance(out, tuple) else x

    h = mod.register_forward_hook(post)
    try:
        yield
    finally:
        h.remove()


def test_cast_like_moves_dtype_and_device():
    v = torch.ones(3, dtype=torch.bfloat16)
    out = cast_like(torch.arange(3.0), v)
    assert out.dtype == torch.bfloat16 and out.device == v.device and out.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_float32_delta_is_cast_to_the_bf16_activation(spec):
    m = _half(spec, "bfloat16")
    ex = [m.chat.encode(p) for p in PROMPTS]
    site, v = Site("resid_post", 0), _vec(m)
    got = steered_logits(m, ex, [Steer(site, v, 1.0)], positions="all")
    with _add_by_hand(m, site, v.to(torch.bfloat16)):
        want = steered_logits(m, ex, [], positions="all")
    assert torch.equal(got, want)  # exactly "add the bf16-cast delta"
    with _add_by_hand(m, site, v):  # float32 added in place: rounds differently, so the cast is visible
        promoted = steered_logits(m, ex, [], positions="all")
    assert not torch.equal(got, promoted)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_models_agree_with_float32(dtype):
    f32, half = load_model("tiny-llama"), _half("tiny-llama", dtype)
    ex32 = [f32.chat.encode(p) for p in PROMPTS]
    steer = [Steer("resid_pre@1", _vec(f32), 1.0), Steer("mlp_out@0", _vec(f32, 1), 0.5)]
    # steering (logits): the steer moves the logits far more than the dtype's noise
    a, b = (steered_logits(x, ex32, steer, positions="all") for x in (f32, half))
    moved = (a - steered_logits(f32, ex32, [], positions="all")).abs().max()
    noise = (a - b).abs().max()
    assert noise < 0.05 * moved and noise < 0.1, (float(noise), float(moved))
    # generation, prefill-only generation, sampling, and the monitor all run on float32 vectors
    assert len(generate_steered(half, ex32, steer, max_new_tokens=3)) == len(ex32)
    assert len(generate_steered(half, ex32, steer, max_new_tokens=3, sampling=Sampling(1.0, seed=0))) == 3
    deltas = torch.stack([_vec(f32), -_vec(f32)])
    assert len(generate(half, ex32, max_new_tokens=3, layer=1, deltas=deltas)) == 3
    w = [Watch("w", Site("resid_post", 1), _vec(f32, 2))]
    t32 = monitor(f32, ex32, w, max_new_tokens=1, steers=steer, stop_at_eos=False)
    th = monitor(half, ex32, w, max_new_tokens=1, steers=steer, stop_at_eos=False)
    for x, y in zip(t32, th, strict=True):
        assert abs(x.scores["w@resid_post@1"][0] - y.scores["w@resid_post@1"][0]) < 0.02
    # extraction
    sites = [Site("resid_post", 1), Site("attn_out", 0)]
    ex_r = [f32.chat.encode(p, "A short answer.") for p in PROMPTS]
    for pos in ("last", "mean", "all"):
        e32 = extract(f32, ex_r, sites, position=pos, cache=False, progress=False)
        eh = extract(half, ex_r, sites, position=pos, cache=False, progress=False)
        for s in sites:
            assert eh[s].dtype == torch.float32
            torch.testing.assert_close(eh[s], e32[s], rtol=0.05, atol=0.05)
    # sweeps: float32 deltas, fast and naive agree with each other and with float32
    reduce = lambda lg: lg[:, 5] - lg[:, 6]  # noqa: E731
    fast_h = last_token_sweep(half, ex32, 1, deltas, reduce)
    naive_h = naive_sweep(half, ex32, 1, deltas, reduce)
    fast_32 = last_token_sweep(f32, ex32, 1, deltas, reduce)
    torch.testing.assert_close(fast_h, naive_h, rtol=0, atol=0.05)
    torch.testing.assert_close(fast_h, fast_32, rtol=0, atol=0.05)
    multi = multi_layer_sweep(half, ex32, {0: deltas, 1: deltas}, reduce)
    torch.testing.assert_close(multi[1], fast_h, rtol=0, atol=1e-6)
    # patching
    src = [f32.chat.encode(p) for p in ["Bake me a cake.", "Hello you", "What is one plus one?"]]
    psites = [Site("resid_pre", 1), Site("attn_out", 0), Site("mlp_out", 1)]
    p32 = patch_last_k(f32, ex32, src, psites, k=2, reduce=reduce)
    ph = patch_last_k(half, ex32, src, psites, k=2, reduce=reduce)
    torch.testing.assert_close(ph.patched, p32.patched, rtol=0, atol=0.05)


def test_inputs_go_to_the_embedding_device():
    m = load_model("tiny-qwen2")
    inp = to_model({"input_ids": torch.ones(1, 2, dtype=torch.long)}, m)
    assert inp["input_ids"].device == m.hf.get_input_embeddings().weight.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where the device tool lends one)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_vectors_steer_a_cuda_model(dtype):
    cpu = load_model("tiny-llama", dtype=dtype)
    gpu = load_model("tiny-llama", dtype=dtype)
    gpu.hf.to("cuda")
    ex = [cpu.chat.encode(p) for p in PROMPTS]
    steer = [Steer("resid_pre@1", _vec(cpu), 1.0)]
    tol = dict(rtol=0, atol=1e-3 if dtype == "float32" else 0.1)
    torch.testing.assert_close(steered_logits(gpu, ex, steer), steered_logits(cpu, ex, steer), **tol)
    assert generate_steered(gpu, ex, steer, max_new_tokens=3) is not None
    assert generate_steered(gpu, ex, steer, max_new_tokens=3, sampling=Sampling(1.0, seed=0)) is not None
    deltas = torch.stack([_vec(cpu), -_vec(cpu)])
    generate(gpu, ex, max_new_tokens=3, layer=1, deltas=deltas)
    reduce = lambda lg: lg[:, 5]  # noqa: E731
    torch.testing.assert_close(last_token_sweep(gpu, ex, 1, deltas, reduce),
                               last_token_sweep(cpu, ex, 1, deltas, reduce), **tol)
    torch.testing.assert_close(naive_sweep(gpu, ex, 1, deltas, reduce),
                               naive_sweep(cpu, ex, 1, deltas, reduce), **tol)
    src = [cpu.chat.encode(p) for p in ["Bake me a cake.", "Hello you", "What is one plus one?"]]
    psites = [Site("resid_pre", 1), Site("attn_out", 0)]
    torch.testing.assert_close(patch_last_k(gpu, ex, src, psites, k=2, reduce=reduce).patched,
                               patch_last_k(cpu, ex, src, psites, k=2, reduce=reduce).patched, **tol)
    w = [Watch("w", Site("resid_post", 1), _vec(cpu, 2))]
    monitor(gpu, ex, w, max_new_tokens=2, steers=steer)
    ex_r = [cpu.chat.encode(p, "Sure.") for p in PROMPTS]
    for pos in ("last", "mean", "all"):
        a = extract(gpu, ex_r, [Site("resid_post", 1)], position=pos, cache=False, progress=False)
        b = extract(cpu, ex_r, [Site("resid_post", 1)], position=pos, cache=False, progress=False)
        torch.testing.assert_close(a[Site("resid_post", 1)], b[Site("resid_post", 1)], **tol)


def test_dtype_auto_picks_bf16_only_where_native_and_faster(monkeypatch, tmp_cache):
    """No native-bf16 flag: float32 without timing anything; native and 3× faster: bfloat16;
    native but barely faster: float32; every decision is named in the run record."""
    from traitlab import models, paths, runinfo

    monkeypatch.setattr(models, "_RESOLVED", {})
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(models, "_matmul_seconds", lambda *a, **k: pytest.fail("timed without native bf16"))
    d, why = models.resolve_dtype("auto")
    assert d == "float32" and "no native bf16" in why
    assert models.resolve_dtype("bfloat16") == ("bfloat16", "asked for bfloat16")

    monkeypatch.setattr(models, "_RESOLVED", {})
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    times = {torch.float32: 3.0, torch.bfloat16: 1.0}
    monkeypatch.setattr(models, "_matmul_seconds", lambda dtype, device, reps=5: times[dtype])
    d, why = models.resolve_dtype("auto")
    assert d == "bfloat16" and "amx_bf16" in why and "3.0×" in why
    assert runinfo.run_record({})["dtype_auto"] == {"cpu": f"bfloat16 ({why})"}

    # the measurement is stored per machine: a later process on it (a fresh _RESOLVED) reads it back
    # even where its own timing would come out otherwise (a loaded machine); measured anew once removed
    monkeypatch.setattr(models, "_RESOLVED", {})
    times[torch.bfloat16] = 2.5
    assert models.resolve_dtype("auto") == (d, why)
    stored = list(paths.cache_dir("dtype").glob("*.json"))
    assert len(stored) == 1 and "stored in $TRAITLAB_CACHE/dtype" in why
    stored[0].unlink()
    monkeypatch.setattr(models, "_RESOLVED", {})
    d, why = models.resolve_dtype("auto")
    assert d == "float32" and "only 1.2× float32" in why
    # a tiny model loads in the resolved dtype and says so
    monkeypatch.setattr(models, "_RESOLVED", {"cpu": ("float32", "auto: test")})
    m = models.load_model("tiny-llama", dtype="auto")
    assert m.dtype == "float32" and next(m.hf.parameters()).dtype == torch.float32


@pytest.mark.parametrize("damage", ["not json", "other machine", "wrong dtype for its speed", "nan speed"])
def test_a_damaged_stored_dtype_decision_is_measured_again(monkeypatch, tmp_cache, damage):
    """A stored decision is read only when its key is this machine's and its content is whole."""
    import json

    from traitlab import models, paths

    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512_bf16"})
    times = {torch.float32: 3.0, torch.bfloat16: 1.0}
    monkeypatch.setattr(models, "_matmul_seconds", lambda dtype, device, reps=5: times[dtype])
    monkeypatch.setattr(models, "_RESOLVED", {})
    assert models.resolve_dtype("auto")[0] == "bfloat16"
    [path] = paths.cache_dir("dtype").glob("*.json")
    entry = json.loads(path.read_text())
    bad = {"not json": "{", "other machine": json.dumps({**entry, "key": {**entry["key"], "cpu": "other"}}),
           "wrong dtype for its speed": json.dumps({**entry, "dtype": "float32"}),
           "nan speed": json.dumps({**entry, "speed": float("nan")})}[damage]
    path.write_text(bad)
    times[torch.bfloat16] = 2.5  # measured anew: now float32, and stored in place of the damage
    monkeypatch.setattr(models, "_RESOLVED", {})
    with pytest.warns(UserWarning, match="measuring again"):
        assert models.resolve_dtype("auto")[0] == "float32"
    assert json.loads(path.read_text())["dtype"] == "float32"
