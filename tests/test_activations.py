"""Extraction: padding/batch invariance, positions, the on-disk cache and resuming."""

from __future__ import annotations

import pytest
import torch

import traitlab.activations as A
from traitlab.activations import ExtractionError, extract
from traitlab.sites import Site

PROMPTS = [("Hi", "Hello! How can I help you today?"), ("Tell me a long story about a dragon", "Once."),
           ("What is 2+2?", "4"), ("Name three colours of the rainbow, please", "Red, orange, yellow.")] * 5


def _examples(model):
    return [model.chat.encode(p, r) for p, r in PROMPTS]


def _sites(model):
    return [Site(n, layer) for layer in range(model.n_layers) for n in ("resid_pre", "v", "attn_out",
                                                                        "mlp_out", "resid_post")]


@pytest.mark.parametrize("position", ["last", "mean", "all"])
def test_batch_and_padding_invariance(tiny, position):
    ex, sites = _examples(tiny), _sites(tiny)
    ref = extract(tiny, ex, sites, position=position, batch_size=1, padding_side="right",
                  cache=False, progress=False)
    for bs, side in [(16, "left"), (16, "right"), (3, "left")]:
        got = extract(tiny, ex, sites, position=position, batch_size=bs, padding_side=side,
                      cache=False, progress=False)
        for s in sites:
            torch.testing.assert_close(got[s], ref[s], rtol=0, atol=1e-5)


def test_positions_pick_the_right_tokens(tiny):
    ex = _examples(tiny)[:4]
    s = Site("resid_post", 0)
    every = extract(tiny, ex, [s], position="all", cache=False, progress=False).per_example(s)
    last = extract(tiny, ex, [s], position="last", cache=False, progress=False)[s]
    mean = extract(tiny, ex, [s], position="mean", cache=False, progress=False)[s]
    for i, e in enumerate(ex):
        assert every[i].shape[0] == len(e.ids)
        torch.testing.assert_close(last[i], every[i][e.prompt_len - 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(mean[i], every[i][e.prompt_len:].mean(0), rtol=0, atol=1e-5)


def test_cache_roundtrip_and_resume(tiny, tmp_cache, monkeypatch):
    ex, sites = _examples(tiny), [Site("resid_post", 1), Site("attn_out", 0)]
    fresh = extract(tiny, ex, sites, position="mean", batch_size=4, cache=False, progress=False)

    calls = {"n": 0}
    real = A._run_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted after two batches were written
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(tiny, ex, sites, position="mean", batch_size=4, progress=False)
    folder = next((tmp_cache / "activations").iterdir())
    assert len(list(folder.glob("shard_*.safetensors"))) == 2
    assert not list(folder.glob(".*tmp"))  # nothing half-written

    calls["n"] = 10  # no more failures; count the batches actually run on resume
    resumed = extract(tiny, ex, sites, position="mean", batch_size=4, progress=False)
    assert calls["n"] == 10 + 3  # 5 batches, 2 reused from shards
    assert (folder / "acts.safetensors").exists() and not list(folder.glob("shard_*"))
    monkeypatch.setattr(A, "_run_batch", lambda *a, **k: pytest.fail("cache not used"))
    cached = extract(tiny, ex, sites, position="mean", batch_size=4, progress=False)
    for s in sites:
        assert torch.equal(resumed[s], fresh[s]) and torch.equal(cached[s], fresh[s])


@pytest.mark.parametrize("position", ["last", "all"])
def test_streamed_extraction_equals_in_memory_and_resumes(tiny, tmp_cache, monkeypatch, position):
    ex, sites = _examples(tiny), [Site("resid_post", 1), Site("v", 0)]
    fresh = extract(tiny, ex, sites, position=position, batch_size=3, cache=False, progress=False)

    calls = {"n": 0}
    real = A._run_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(tiny, ex, sites, position=position, batch_size=3, stream=True, progress=False)
    calls["n"] = 10
    disk = extract(tiny, ex, sites, position=position, batch_size=3, stream=True, progress=False)
    assert isinstance(disk, A.DiskActivations)
    assert calls["n"] == 10 + 7 - 3  # 7 batches, 3 reused from shards
    folder = disk.folder
    assert (folder / "manifest.json").exists() and not (folder / "acts.safetensors").exists()
    assert len(list(folder.glob("shard_*.safetensors"))) == 7  # shards are the result: kept
    for s in sites:
        assert torch.equal(disk[s], fresh[s])
    if position == "all":
        for a, b in zip(disk.per_example(sites[0]), fresh.per_example(sites[0]), strict=True):
            assert torch.equal(a, b)
    monkeypatch.setattr(A, "_run_batch", lambda *a, **k: pytest.fail("stream not reused"))
    again = extract(tiny, ex, sites, position=position, batch_size=3, stream=True, progress=False)
    assert torch.equal(again[sites[1]], fresh[sites[1]])
    with pytest.raises(KeyError, match="was not extracted"):
        disk[Site("resid_post", 0)]


def test_stream_needs_a_folder(tiny):
    with pytest.raises(ExtractionError, match="stream=True writes each batch to disk"):
        extract(tiny, _examples(tiny), [Site("resid_post", 0)], cache=False, stream=True)


def test_cache_key_depends_on_inputs(tiny):
    ex = _examples(tiny)
    k = A.cache_key(tiny, ex, [Site("resid_pre", 0)], "last")
    assert k != A.cache_key(tiny, ex[:-1], [Site("resid_pre", 0)], "last")
    assert k != A.cache_key(tiny, ex, [Site("resid_pre", 1)], "last")
    assert k != A.cache_key(tiny, ex, [Site("resid_pre", 0)], "mean")


def test_bad_input_fails_early(tiny):
    ex = _examples(tiny)
    with pytest.raises(ExtractionError, match="empty"):
        extract(tiny, [], [Site("resid_pre", 0)], cache=False)
    with pytest.raises(ExtractionError, match="no response"):
        extract(tiny, [tiny.chat.encode("Hi")], [Site("resid_pre", 0)], position="mean", cache=False)
    with pytest.raises(ExtractionError, match="position"):
        extract(tiny, ex, [Site("resid_pre", 0)], position="first", cache=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        extract(tiny, ex, [Site("resid_pre", 9)], cache=False)
