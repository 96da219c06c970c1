"""Converters with the real peers: steering-vectors' ``SteeringVector`` and repeng's
``ControlVector``, inside the peer environment ``benchmarks/peer_env.py`` builds
(transformers 4, numpy 1, traitlab's torch).

The peer environment is built on first use when ``TRAITLAB_BUILD_PEER_ENV=1`` (about a
minute with pip's cache warm, several without; it needs PyPI); otherwise this test skips
when ``build/peer-venv`` is absent and says how to make it. The stand-in tests in
``test_vectors.py`` cover the same conversions without the peers.

Checked: both conversions round-trip exactly with the real classes; repeng's own
``export_gguf`` is read by ``from_llama_gguf`` and repeng's ``import_gguf`` reads ours; and
each peer's own steering (``SteeringVector.apply``, ``ControlModel.set_control``) of the
same tiny weights gives the logits of traitlab's ``steered_logits`` (all positions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from traitlab import vectors as V
from traitlab.models import load_model
from traitlab.steering import steered_logits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
PROMPTS = ["Tell me about the sea.", "Hi", "What is two plus two, in words?"]
COEF = 3.0


@pytest.fixture(scope="module")
def peer_python() -> Path:
    import peer_env

    stamp = peer_env.VENV / ".installed"
    if not stamp.exists() and os.environ.get("TRAITLAB_BUILD_PEER_ENV") != "1":
        pytest.skip(f"peer environment {peer_env.VENV} not built: run `python benchmarks/peer_env.py` "
                    "(needs PyPI) or set TRAITLAB_BUILD_PEER_ENV=1")
    try:
        return peer_env.peer_python()
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"cannot build the peer environment (offline?): {err}")


@pytest.mark.parametrize("site", ["resid_post@1", "resid_pre@1"])
def test_real_peers_convert_round_trip_and_steer_like_traitlab(peer_python, tmp_path, site):
    m = load_model("tiny-llama")
    model_dir = tmp_path / "model"
    m.hf.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(3)
    art = V.as_artifact({site: torch.randn(m.d_model, generator=g)}, method="mean_diff", trait="t")
    vec = V.save_vector(art, tmp_path / "vec")
    our_gguf = V.to_llama_gguf({"resid_post@1": art.vectors[site]}, tmp_path / "ours.gguf", coef=2.0)
    examples = [m.chat.encode(p) for p in PROMPTS]
    job = {"vector_path": str(vec), "model_dir": str(model_dir), "coef": COEF, "out_dir": str(tmp_path),
           "prompt_ids": [list(e.ids) for e in examples], "our_gguf": str(our_gguf), "gguf_coef": 2.0}
    (tmp_path / "job.json").write_text(json.dumps(job))
    run = subprocess.run([str(peer_python), str(ROOT / "benchmarks" / "peer_convert.py"),
                          str(tmp_path / "job.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]

    checks = json.loads((tmp_path / "peer_checks.json").read_text())["checks"]
    assert checks == {k: True for k in checks} and len(checks) == 6, checks
    # repeng's own GGUF export, read by traitlab: resid_post@N on both sides
    if site == "resid_post@1":
        theirs = V.from_llama_gguf(tmp_path / "repeng.gguf")
        assert theirs.sites == [site] and torch.equal(theirs.vectors[site], art.vectors[site])
    else:  # resid_pre@1 = layer 0's output: repeng writes direction.0, which llama.cpp rejects
        with pytest.raises(V.VectorError, match="llama.cpp would reject"):
            V.from_llama_gguf(tmp_path / "repeng.gguf")

    from safetensors.torch import load_file

    peer = load_file(str(tmp_path / "peer_logits.safetensors"))
    ours = steered_logits(m, examples, art.steers(COEF, m), positions="all", batch_size=1)
    plain = steered_logits(m, examples, [], batch_size=1)
    torch.testing.assert_close(peer["plain"], plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(peer["sv"], ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(peer["repeng"], ours, rtol=0, atol=1e-5)
    assert (ours - plain).abs().max() > 0.1  # the vector does move the logits
