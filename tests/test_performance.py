"""The performance report's reading of benchmark results: targets, frames, fitted slopes."""

from __future__ import annotations

import json

import pytest

from traitlab.experiments import performance as perf
from traitlab.params import ParamError


def _record(figures):
    return {"benchmark": "x", "figures": figures, "date": "2026-12-01 00:00:00 UTC", "git_commit": "abc" * 14,
            "machine": {"cpu": "test cpu", "torch_threads": 2}, "versions": {"torch": "2"}}


def _cell(model, n, params, seconds, rss):
    return {"model": model, "n_prompts": n, "tokens": 30 * n, "params": params, "seconds": seconds,
            "tokens_per_s": 30 * n / seconds, "peak_rss_bytes": rss, "activation_bytes": n * 100,
            "baseline_rss_bytes": 1, "layers": 2, "weight_bytes": params * 4}


def test_loglog_slope_recovers_a_power_law():
    xs = [100, 1000, 10000]
    a, b = perf.loglog_slope(xs, [3 * x ** 1.5 for x in xs])
    assert a == pytest.approx(1.5) and 10 ** b == pytest.approx(3)
    with pytest.raises(ValueError, match="two distinct"):
        perf.loglog_slope([5, 5], [1, 2])


def test_targets_are_collected_with_labels():
    results = {"extraction_throughput": _record({"runs": [
        {"batch_size": 1, "ratio": {"value": 0.97, "target": ">= 0.95", "met": True}},
        {"batch_size": 8, "ratio": {"value": 0.90, "target": ">= 0.95", "met": False}}]}),
        "peers": _record({"train": {"value": 2.0, "target": ">= 1.5", "met": True}, "n_pairs": 3})}
    t = perf.targets(results)
    assert list(t.figure) == ["runs[batch_size=1].ratio", "runs[batch_size=8].ratio", "train"]
    assert list(t.met) == [True, False, True] and list(t.benchmark) == ["extraction_throughput"] * 2 + ["peers"]


def test_scaling_frames_fit_the_slopes(tmp_path):
    ms = {"small": 100e6, "mid": 400e6, "big": 1600e6}
    fig = {"size_n": 300, "by_count": [_cell("small", n, 100e6, 0.01 * n, 1e9 + n) for n in (100, 1000, 10000)],
           "by_size": [_cell(m, 300, p, 2.0 * (p / 1e8) ** 0.8, 2 ** 30) for m, p in ms.items()]}
    (tmp_path / "scaling.json").write_text(json.dumps(_record(fig)))
    results = perf.load(perf.Params(results_dir=str(tmp_path), benchmarks=["scaling"]))
    by_count, by_size, slopes = perf.scaling_frames(results)
    assert len(by_count) == 3 and len(by_size) == 3
    got = slopes.set_index(["axis", "quantity"]).slope
    assert got[("prompt count", "seconds")] == pytest.approx(1.0)
    assert got[("model size", "seconds")] == pytest.approx(0.8)
    assert got[("model size", "peak RSS GiB")] == pytest.approx(0.0, abs=1e-9)


def test_missing_results_name_the_command(tmp_path):
    with pytest.raises(ParamError, match=r"no results for peers.*python benchmarks/peers.py.*make bench"):
        perf.load(perf.Params(results_dir=str(tmp_path), benchmarks=["peers"]))
    with pytest.raises(ParamError, match="unknown benchmarks"):
        perf.Params(benchmarks=["peer"])


def test_record_tolerances_from_repeats_and_verdicts():
    from traitlab import records

    results = {
        "extraction_throughput": _record({"runs": [
            {"batch_size": 8, "bare_seconds": [10.0, 10.0, 11.0, 9.0, 10.0], "traitlab_seconds": [10.0] * 5,
             "ratio": {"value": 1.0, "target": ">= 0.95", "met": True}}]}),
        "peers": _record({"seconds": {"train_repeng": [30.0, 28.0, 32.0], "train_traitlab": [10.0, 10.0, 10.0]},
                          "train_speedup_vs_repeng": {"value": 3.0, "target": ">= 1.5", "met": True},
                          "logit_parity": {"value": 0.0, "target": "<= 0.001", "met": True}}),
        "memory": _record({"runs": [{"model": "m-1", "position": "last", "stream": True,
                                     "target": {"value": 2.0, "target": "<= 1.5", "met": False}}]})}
    rec = perf.record(perf.Params(), results)
    assert list(records.names(rec)) == ["extraction.ratio.bs8", "peers.train_speedup_vs_repeng", "peers.logit_parity",
                                        "memory.m_1.last.stream"]
    # bare seconds: median 10, MAD 0 → no spread; traitlab constant → SE 0
    assert rec["extraction.ratio.bs8"].tolerance == 0
    sp = rec["peers.train_speedup_vs_repeng"]  # median 30, MAD 2 → SE of log median 1.2533·2.9652/(√3·30)
    assert sp.tolerance == pytest.approx(2 * 3.0 * 1.2533 * 1.4826 * 2 / (3 ** 0.5 * 30))
    assert rec["peers.logit_parity"].tolerance == 0.001
    mem = rec["memory.m_1.last.stream"]
    assert mem.tolerance == pytest.approx(0.2) and "measured once" in mem.tolerance_rule
    verdicts = {c.id: c.verdict for c in rec.claims}
    assert verdicts["memory_m_1_last_stream"] == "not held"  # missed by 0.5, tolerance 0.2
    assert verdicts["peers_train_speedup_vs_repeng"] == "holds"
    moved = records.ResultRecord(rec.report, quantities=tuple(
        records.Quantity(q.name, q.value * (0.8 if q.name == "peers.train_speedup_vs_repeng" else 1), q.unit, q.n,
                         q.ci, q.tolerance, q.tolerance_rule) for q in rec.quantities), claims=rec.claims)
    problems = records.compare(rec, moved)
    assert len(problems) == 1 and problems[0].startswith("performance.peers.train_speedup_vs_repeng:"), problems


def test_decode_overhead_tolerance_comes_from_its_alternating_rounds():
    results = {"decode_floor": _record({"seconds": {"bare": [20.0, 22.0, 24.0], "traitlab": [20.0, 22.0, 24.0]},
                                         "overhead": {"value": 1.0, "target": "<= 1.05", "met": True},
                                         "identical_share": {"value": 1.0, "target": ">= 1.0", "met": True}})}
    rec = perf.record(perf.Params(benchmarks=["decode_floor"]), results)
    # both medians 22, MAD 2 each: SE of each log median 1.2533·1.4826·2/(√3·22), combined in quadrature, k = 2
    se = 1.2533 * 1.4826 * 2 / (3 ** 0.5 * 22)
    assert rec["decode_floor.overhead"].tolerance == pytest.approx(2 * 1.0 * (2 * se ** 2) ** 0.5)
    assert rec["decode_floor.identical_share"].tolerance == pytest.approx(0.1)  # measured once: 10%
    assert {c.id: c.verdict for c in rec.claims}["decode_floor_overhead"] == "holds"


def test_forward_count_puts_a_forward_in_flops():
    """``benchmarks/common.ForwardCount``: every input position counted (padding too), the head
    only where logits are kept; FLOPs = 2 × (body parameters × tokens + head parameters × head rows)."""
    import sys
    from pathlib import Path

    import torch

    from traitlab.models import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from common import ForwardCount

    hf = load_model("tiny-qwen2").hf
    with torch.no_grad(), ForwardCount(hf) as c:
        hf(input_ids=torch.ones(3, 5, dtype=torch.long), logits_to_keep=1)
        hf(input_ids=torch.ones(2, 4, dtype=torch.long))
    emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    tied = emb.data_ptr() == head.data_ptr()
    total = sum(p.numel() for p in {p.data_ptr(): p for p in hf.parameters()}.values())
    assert c.head_params == head.numel()
    assert c.body_params == total - emb.numel() - (0 if tied else head.numel())
    assert (c.tokens, c.head_rows) == (3 * 5 + 2 * 4, 3 * 1 + 2 * 4)
    assert c.gflop == pytest.approx(2 * (c.body_params * 23 + c.head_params * 11) / 1e9)
    hf(input_ids=torch.ones(1, 2, dtype=torch.long))  # hooks removed on exit
    assert c.tokens == 23
