"""The exported control vector steers the real llama.cpp as traitlab steers the model.

Model: the zoo's SmolLM2-135M-Instruct, one GGUF file (Q4_1). llama.cpp (llama-cpp-python,
a dev dependency) runs it as is: 4-bit weights, quantized activations in the matrix
products. traitlab runs the same file dequantized to float32. So the *absolute* logits
differ slightly; what must agree is the **shift** the vector causes, steered − unsteered,
per prompt, over the whole vocabulary (Pearson r and cosine), and the steered model's
top-1 token. Controls: the same vector exported one layer late, or with its sign flipped,
must fail the same criterion.

The file goes through llama.cpp's own parser: ggml's ``gguf_init_from_file`` (from the
libggml that llama-cpp-python ships) reads the tensor table, and the buffer is laid out
exactly as ``common_control_vector_load_one`` does (``direction.N`` at ``(N-1) * n_embd``)
before ``llama_apply_adapter_cvec`` (what ``--control-vector`` calls).
"""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is a dev dependency")

from traitlab import vectors as V  # noqa: E402
from traitlab.steering import Steer, activation_norms, steered_logits  # noqa: E402

MODEL = "smollm2-135m-instruct"
LAYER = 12  # of 30
RATIOS = (0.5, 1.0)  # perturbation ratios: coef × ‖v‖ / mean ‖resid_post@LAYER‖
SEED = 0
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.",
           "How do I sort a list in Python?", "Tell me about your day."]
MIN_R = 0.95  # Pearson r of the logit shifts, llama.cpp vs traitlab


class GGUF(ctypes.Structure):
    """ggml's ``struct gguf_init_params``."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def _ggml() -> ctypes.CDLL:
    libdir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml.so"):
        for cand in glob.glob(str(libdir / f"{name}*")):
            lib = ctypes.CDLL(cand)
            if hasattr(lib, "gguf_init_from_file"):
                return lib
    pytest.skip(f"no libggml with gguf_init_from_file under {libdir}")


def llama_cpp_buffer(path: Path, n_embd: int) -> np.ndarray:
    """The float buffer ``common_control_vector_load_one`` builds from ``path``, read
    through ggml's own GGUF parser: layer N's direction at offset (N-1) × n_embd."""
    g = _ggml()
    g.gguf_init_from_file.restype = ctypes.c_void_p
    g.gguf_init_from_file.argtypes = [ctypes.c_char_p, GGUF]
    g.gguf_get_n_tensors.restype = ctypes.c_int64
    g.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    g.gguf_get_tensor_name.restype = ctypes.c_char_p
    g.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_get_tensor_offset.restype = ctypes.c_size_t
    g.gguf_get_tensor_offset.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_get_tensor_type.restype = ctypes.c_int
    g.gguf_get_tensor_type.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_get_tensor_size.restype = ctypes.c_size_t
    g.gguf_get_tensor_size.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_get_data_offset.restype = ctypes.c_size_t
    g.gguf_get_data_offset.argtypes = [ctypes.c_void_p]
    g.gguf_free.argtypes = [ctypes.c_void_p]
    ctx = g.gguf_init_from_file(str(path).encode(), GGUF(True, None))
    assert ctx, f"ggml could not parse {path}"
    raw = path.read_bytes()
    data = np.zeros(0, dtype=np.float32)
    try:
        base = g.gguf_get_data_offset(ctx)
        for i in range(g.gguf_get_n_tensors(ctx)):
            name = g.gguf_get_tensor_name(ctx, i).decode()
            kind, _, idx = name.partition(".")
            assert kind == "direction" and int(idx) >= 1, name
            assert g.gguf_get_tensor_type(ctx, i) == 0  # GGML_TYPE_F32
            n = int(idx)
            assert g.gguf_get_tensor_size(ctx, i) == 4 * n_embd
            off = base + g.gguf_get_tensor_offset(ctx, i)
            t = np.frombuffer(raw, dtype="<f4", count=n_embd, offset=off)
            if data.size < n * n_embd:
                data = np.concatenate([data, np.zeros(n * n_embd - data.size, dtype=np.float32)])
            data[(n - 1) * n_embd: n * n_embd] += t
    finally:
        g.gguf_free(ctx)
    return data


@pytest.fixture(scope="module")
def setup():
    from traitlab import zoo
    from traitlab.models import load_model

    gguf_path = zoo.fetch(MODEL, quiet=True)
    m = load_model(MODEL, quiet=True)
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, n_batch=256, seed=0, verbose=False,
                          n_threads=int(os.environ.get("OMP_NUM_THREADS", "2")), logits_all=False)
    return m, llm


def _cpp_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)  # with logits_all=False llama.cpp keeps one output row: the last token's
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
    return torch.from_numpy(row.astype(np.float32))


def _set_cvec(llm, path: Path | None, n_embd: int) -> None:
    """``--control-vector PATH`` (layers 1 .. n_layer, as common_init_from_params sets them),
    or no control vector when ``path`` is None."""
    apply = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec
    if path is None:
        rc = apply(llm._ctx.ctx, None, 0, n_embd, -1, -1)
    else:
        n_layer = llama_cpp.llama_model_n_layer(llm._model.model)
        buf = llama_cpp_buffer(path, n_embd)
        # llama_set_adapter_cvec only overwrites the layers the buffer covers; a context that
        # held another vector keeps it in the rest. Pad with zeros (what a fresh context has).
        buf = np.concatenate([buf, np.zeros(max(0, n_layer * n_embd - buf.size), dtype=np.float32)])
        rc = apply(llm._ctx.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, n_embd,
                   1, n_layer)
    assert rc == 0


def _cpp_steered(llm, examples, path: Path | None, n_embd: int) -> torch.Tensor:
    _set_cvec(llm, path, n_embd)
    return torch.stack([_cpp_logits(llm, list(e.ids)) for e in examples])


def _agreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[list[float], list[float]]:
    rs, coss = [], []
    for a, b in zip(ours, theirs, strict=True):
        rs.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
        coss.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    return rs, coss


@pytest.mark.parametrize("ratio", RATIOS)
def test_exported_control_vector_moves_llama_cpp_logits_like_traitlab(setup, tmp_path, ratio):
    m, llm = setup
    examples = [m.chat.encode(p) for p in PROMPTS]
    site = f"resid_post@{LAYER}"
    g = torch.Generator().manual_seed(SEED)
    unit = torch.randn(m.d_model, generator=g)
    unit = unit / unit.norm()
    act = activation_norms(m, examples, [site])[site]
    coef = ratio * act
    d = {site: unit}

    plain_tl = steered_logits(m, examples, [], batch_size=1)
    steer_tl = steered_logits(m, examples, [Steer(site, unit, coef)], positions="all", batch_size=1)
    shift_tl = steer_tl - plain_tl

    path = V.to_llama_gguf(d, tmp_path / "cv.gguf", coef=coef, model=m)
    plain_cpp = _cpp_steered(llm, examples, None, m.d_model)
    steer_cpp = _cpp_steered(llm, examples, path, m.d_model)
    shift_cpp = steer_cpp - plain_cpp

    r, cos = _agreement(shift_tl, shift_cpp)
    base_r, _ = _agreement(plain_tl, plain_cpp)
    top_tl, top_cpp = steer_tl.argmax(-1), steer_cpp.argmax(-1)
    moved = (top_tl != plain_tl.argmax(-1)).tolist()

    # negative controls: the same vector one layer late, and with its sign flipped
    late = V.to_llama_gguf({f"resid_post@{LAYER + 1}": unit}, tmp_path / "late.gguf", coef=coef, model=m)
    flip = V.to_llama_gguf(d, tmp_path / "flip.gguf", coef=-coef, model=m)
    r_late, _ = _agreement(shift_tl, _cpp_steered(llm, examples, late, m.d_model) - plain_cpp)
    r_flip, _ = _agreement(shift_tl, _cpp_steered(llm, examples, flip, m.d_model) - plain_cpp)
    _set_cvec(llm, None, m.d_model)  # leave the context unsteered

    print(f"\nactivation norm {act:.2f}, coef {coef:.2f}; unsteered logits r {np.round(base_r, 4)}")
    print(f"shift r {np.round(r, 4)}, cosine {np.round(cos, 4)}; top-1 moved by steering {moved}")
    print(f"top-1 traitlab {top_tl.tolist()} llama.cpp {top_cpp.tolist()}")
    print(f"controls: one layer late r {np.round(r_late, 4)}; sign flipped r {np.round(r_flip, 4)}")
    assert min(r) >= MIN_R and min(cos) >= MIN_R
    assert torch.equal(top_tl, top_cpp)
    assert max(r_late) < MIN_R and max(r_flip) < MIN_R
