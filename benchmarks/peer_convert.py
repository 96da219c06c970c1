"""The peers' side of ``tests/test_vectors_peers.py``; runs inside the peer environment.

Converts a saved traitlab vector to steering-vectors' ``SteeringVector`` and repeng's
``ControlVector`` with ``traitlab.vectors`` (which needs only torch, numpy, safetensors and
gguf, all present there), back again, and through repeng's own GGUF export / import. Then
steers a model folder with each peer's own hooks and writes the next-token logits, so the
test can compare them with traitlab's steering of the same weights.

    build/peer-venv/bin/python benchmarks/peer_convert.py JOB.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

import torch  # noqa: E402
from repeng import ControlModel, ControlVector  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from steering_vectors import SteeringVector  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from traitlab import vectors as V  # noqa: E402


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out_dir"])
    art = V.load_vector(job["vector_path"])
    site = art.sites[0]
    checks: dict[str, bool] = {}

    # the peers add at a layer's output: resid_pre@N comes back as resid_post@N-1 (same tensor)
    name, layer = site.split("@")
    same = f"resid_post@{int(layer) - 1}" if name == "resid_pre" else site

    sv = V.to_steering_vector(art)
    checks["sv_is_real_class"] = type(sv) is SteeringVector
    back = V.from_steering_vector(sv)
    checks["sv_round_trip_equal"] = back.sites == [same] and torch.equal(back.vectors[same], art.vectors[site])

    cv = V.to_control_vector(art, model_type="llama")
    checks["cv_is_real_class"] = type(cv) is ControlVector
    back = V.from_control_vector(cv)
    checks["cv_round_trip_equal"] = back.sites == [same] and torch.equal(back.vectors[same], art.vectors[site])
    checks["cv_arithmetic_keeps_layers"] = sorted((2 * cv - cv).directions) == sorted(cv.directions)

    cv.export_gguf(str(out / "repeng.gguf"))  # read back by traitlab in the test
    theirs = ControlVector.import_gguf(job["our_gguf"])  # our export, read by repeng
    want = (job["gguf_coef"] * art.vectors[site].double()).float().numpy()  # our_gguf: resid_post@1
    checks["repeng_reads_our_gguf"] = sorted(theirs.directions) == [1] and bool(
        (theirs.directions[1] == want).all())

    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32).eval()
    coef = job["coef"]

    def logits(m) -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for ids in job["prompt_ids"]:  # one at a time: no padding
                x = torch.tensor([ids])
                rows.append(m(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float())
        return torch.stack(rows)

    plain = logits(model)
    with sv.apply(model, multiplier=coef, min_token_index=0):
        sv_logits = logits(model)
    cmodel = ControlModel(model, list(cv.directions))
    cmodel.set_control(cv, coef)
    rp_logits = logits(cmodel)
    cmodel.reset()
    save_file({"plain": plain, "sv": sv_logits, "repeng": rp_logits}, str(out / "peer_logits.safetensors"))
    (out / "peer_checks.json").write_text(json.dumps({"site": site, "checks": checks}))


if __name__ == "__main__":
    main(sys.argv[1])
