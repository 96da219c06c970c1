"""Fault injection on the activation cache and on sampling parameters.

Every case ends in a correct recovery (the damaged file is deleted with a ``CacheRepairWarning``
and recomputed; the result equals an uninterrupted, uncached run) or a one-line error that
names the file and the fix. Nothing damaged is ever served.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import traitlab.activations as A
from traitlab.activations import ActivationCacheError, CacheRepairWarning, extract
from traitlab.models import load_model
from traitlab.sites import Site
from traitlab.steering import Sampling, generate_steered

PROMPTS = [("Hi", "Hello! How can I help?"), ("Tell me a story about a dragon", "Once."),
           ("What is 2+2?", "4"), ("Name three colours", "Red, orange, yellow."), ("Bye", "See you")]
SITES = [Site("resid_post", 1), Site("attn_out", 0)]
BATCH = 2  # 5 prompts -> 3 shards


@pytest.fixture(scope="module")
def m():
    return load_model("tiny-llama")


@pytest.fixture
def ex(m):
    return [m.chat.encode(p, r) for p, r in PROMPTS]


@pytest.fixture
def counted(monkeypatch):
    """Counts the batches actually computed (not reused from disk)."""
    calls = {"n": 0}
    real = A._run_batch

    def run(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "_run_batch", run)
    return calls


def _fresh(m, ex, position):
    return extract(m, ex, SITES, position=position, batch_size=BATCH, cache=False, progress=False)


def _stream(m, ex, cache, position="all"):
    return extract(m, ex, SITES, position=position, batch_size=BATCH, cache=cache, stream=True, progress=False)


def _same(got, ref):
    for s in SITES:
        assert torch.equal(got[s], ref[s])


def _flip(path, offset=-9):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _one_line(err):
    assert "\n" not in str(err.value), str(err.value)


# ------------------------------------------------------------------ streamed shards

@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "delete"])
def test_damaged_stream_shard_is_recomputed_on_the_next_extract(m, ex, tmp_path, counted, damage):
    ref = _fresh(m, ex, "all")
    disk = _stream(m, ex, tmp_path)
    shard = disk.folder / "shard_00001.safetensors"
    {"truncate": _truncate, "flip_data": _flip, "flip_header": lambda p: _flip(p, 20),
     "delete": lambda p: p.unlink()}[damage](shard)
    counted["n"] = 0
    with pytest.warns(CacheRepairWarning, match="shard_00001"):
        again = _stream(m, ex, tmp_path)
    assert counted["n"] == 1  # only the damaged batch
    _same(again, ref)
    counted["n"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no more warnings, nothing recomputed
        _same(_stream(m, ex, tmp_path), ref)
    assert counted["n"] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "delete"])
def test_damaged_shard_under_an_open_handle_is_a_one_line_error(m, ex, tmp_path, damage):
    disk = _stream(m, ex, tmp_path)
    disk[SITES[0]]  # read once: verified
    shard = disk.folder / "shard_00002.safetensors"
    {"truncate": _truncate, "flip_data": _flip, "delete": lambda p: p.unlink()}[damage](shard)
    with pytest.raises(ActivationCacheError, match="shard_00002.*rerun the same extract") as err:
        disk[SITES[1]]
    _one_line(err)


def test_stray_shard_not_in_the_manifest_is_ignored(m, ex, tmp_path, counted):
    ref = _fresh(m, ex, "all")
    disk = _stream(m, ex, tmp_path)
    stray = disk.folder / "shard_00099.safetensors"
    stray.write_bytes((disk.folder / "shard_00000.safetensors").read_bytes())
    counted["n"] = 0
    again = _stream(m, ex, tmp_path)
    assert counted["n"] == 0
    _same(again, ref)  # read from the manifest's shards only; the stray copy would duplicate rows


@pytest.mark.parametrize("manifest", ["truncated", "not_json", "not_an_object", "no_shard_records"])
def test_bad_stream_manifest_is_rebuilt_from_the_shard_records(m, ex, tmp_path, counted, manifest):
    ref = _fresh(m, ex, "all")
    disk = _stream(m, ex, tmp_path)
    path = disk.folder / "manifest.json"
    text = path.read_text()
    path.write_text({"truncated": text[:len(text) // 2], "not_json": "\x00\x01 garbage",
                     "not_an_object": "[1, 2]",
                     "no_shard_records": json.dumps({k: v for k, v in json.loads(text).items()
                                                     if k != "shards"})}[manifest])
    counted["n"] = 0
    with pytest.warns(CacheRepairWarning, match="manifest.json"):
        again = _stream(m, ex, tmp_path)
    assert counted["n"] == 0  # every shard matched its own record: nothing recomputed
    _same(again, ref)
    assert json.loads(path.read_text())["shards"] == json.loads(text)["shards"]


def test_bad_manifest_and_a_damaged_shard_recompute_only_that_shard(m, ex, tmp_path, counted):
    ref = _fresh(m, ex, "all")
    disk = _stream(m, ex, tmp_path)
    (disk.folder / "manifest.json").write_text("{")
    _flip(disk.folder / "shard_00000.safetensors")
    counted["n"] = 0
    with pytest.warns(CacheRepairWarning):
        again = _stream(m, ex, tmp_path)
    assert counted["n"] == 1
    _same(again, ref)


@pytest.mark.parametrize("position", ["last", "all"])
def test_killed_between_shard_and_its_record_resumes_to_the_uninterrupted_result(m, ex, tmp_path, monkeypatch,
                                                                                 position):
    ref = _fresh(m, ex, position)
    real = A.write_json

    def killed(path, obj):
        if str(path).endswith("shard_00001.json"):
            raise KeyboardInterrupt  # the shard is on disk, its record is not
        return real(path, obj)

    monkeypatch.setattr(A, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _stream(m, ex, tmp_path, position)
    monkeypatch.setattr(A, "write_json", real)
    with pytest.warns(CacheRepairWarning, match="shard_00001.*no valid record"):
        disk = _stream(m, ex, tmp_path, position)
    _same(disk, ref)


def test_damaged_shard_record_means_the_shard_is_recomputed(m, ex, tmp_path, monkeypatch, counted):
    ref = _fresh(m, ex, "last")
    real = A._run_batch
    n = {"k": 0}

    def dies(*a, **k):
        n["k"] += 1
        if n["k"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(A, "_run_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        _stream(m, ex, tmp_path, "last")
    folder = next(tmp_path.iterdir())
    (folder / "shard_00000.json").write_text('{"sha256": "nope"')
    monkeypatch.setattr(A, "_run_batch", real)
    with pytest.warns(CacheRepairWarning, match="shard_00000"):
        _same(_stream(m, ex, tmp_path, "last"), ref)


def test_stale_temp_files_and_a_garbage_layout_are_cleaned(m, ex, tmp_path):
    ref = _fresh(m, ex, "last")
    disk = _stream(m, ex, tmp_path, "last")
    folder = disk.folder
    (folder / "manifest.json").unlink()
    (folder / ".shard_00001.safetensors.abc123.tmp").write_bytes(b"half a shard")
    (folder / "layout.json").write_bytes(b"\xff\xfe")
    _same(_stream(m, ex, tmp_path, "last"), ref)
    assert not list(folder.glob(".*.tmp"))


# ------------------------------------------------------------------ in-memory cache (acts.safetensors)

def _cached(m, ex, cache, position="mean"):
    return extract(m, ex, SITES, position=position, batch_size=BATCH, cache=cache, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "no_manifest", "bad_manifest"])
def test_damaged_cached_result_is_recomputed_with_a_warning(m, ex, tmp_path, counted, damage):
    ref = _fresh(m, ex, "mean")
    _cached(m, ex, tmp_path)
    folder = next(tmp_path.iterdir())
    acts, manifest = folder / "acts.safetensors", folder / "manifest.json"
    {"truncate": lambda: _truncate(acts), "flip_data": lambda: _flip(acts),
     "flip_header": lambda: _flip(acts, 12), "no_manifest": manifest.unlink,
     "bad_manifest": lambda: manifest.write_text("{\"acts\": ")}[damage]()
    counted["n"] = 0
    with pytest.warns(CacheRepairWarning, match="acts.safetensors"):
        again = _cached(m, ex, tmp_path)
    assert counted["n"] == 3
    _same(again, ref)
    counted["n"] = 0
    _same(_cached(m, ex, tmp_path), ref)
    assert counted["n"] == 0


def test_killed_before_the_manifest_resumes_from_the_shards(m, ex, tmp_path, monkeypatch, counted):
    ref = _fresh(m, ex, "mean")
    real = A.write_json

    def killed(path, obj):
        if str(path).endswith("manifest.json"):
            raise KeyboardInterrupt  # acts.safetensors written, manifest (with its digest) not
        return real(path, obj)

    monkeypatch.setattr(A, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _cached(m, ex, tmp_path)
    monkeypatch.setattr(A, "write_json", real)
    counted["n"] = 0
    with pytest.warns(CacheRepairWarning, match="manifest.json is missing"):
        again = _cached(m, ex, tmp_path)
    assert counted["n"] == 0  # the verified shards were still there
    _same(again, ref)


def test_legacy_manifest_without_digest_is_checked_then_recorded(m, ex, tmp_path, counted):
    ref = _fresh(m, ex, "mean")
    _cached(m, ex, tmp_path)
    manifest = next(tmp_path.iterdir()) / "manifest.json"
    old = json.loads(manifest.read_text())
    digest = old.pop("acts")
    manifest.write_text(json.dumps(old))  # as written before digests existed
    counted["n"] = 0
    _same(_cached(m, ex, tmp_path), ref)
    assert counted["n"] == 0 and json.loads(manifest.read_text())["acts"] == digest
    _flip(manifest.parent / "acts.safetensors")  # now recorded: a later flip is caught
    with pytest.warns(CacheRepairWarning, match="sha256"):
        _same(_cached(m, ex, tmp_path), ref)


def test_truncated_shard_left_by_an_interrupted_in_memory_run_is_redone(m, ex, tmp_path, monkeypatch):
    ref = _fresh(m, ex, "last")
    real = A._run_batch
    n = {"k": 0}

    def dies(*a, **k):
        n["k"] += 1
        if n["k"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(A, "_run_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        _cached(m, ex, tmp_path, "last")
    monkeypatch.setattr(A, "_run_batch", real)
    _truncate(next(tmp_path.iterdir()) / "shard_00001.safetensors")
    with pytest.warns(CacheRepairWarning, match="shard_00001"):
        _same(_cached(m, ex, tmp_path, "last"), ref)


# ------------------------------------------------------------------ sampling parameters

@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": -1}, "seed must be a non-negative int"),
    ({"seed": 1.5}, "seed"),
])
def test_bad_sampling_parameters_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        Sampling(**kwargs)
    _one_line(err)


def test_bad_sampling_mappings_are_one_line_errors(m):
    with pytest.raises(ValueError, match="unknown key.*top_k") as err:
        Sampling.parse({"temperature": 1.0, "top_k": 5})
    _one_line(err)
    with pytest.raises(ValueError, match="mapping"):
        Sampling.parse(0.7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_p"):
        generate_steered(m, [m.chat.encode("Hi")], [], max_new_tokens=2, sampling={"top_p": 2})
