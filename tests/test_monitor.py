"""Token monitor: readings taken during generation equal a teacher-forced forward; steering and
monitoring in one pass; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlab.models import load_model
from traitlab.monitor import TokenTrace, Watch, monitor, site_width
from traitlab.sites import Site, envoy_value, module_path, resolve
from traitlab.steering import Steer, generate_steered


def _forward_reads(m, full_ids: torch.Tensor, site: Site) -> torch.Tensor:
    env = resolve(m.lm, module_path(m.arch, site))
    with m.lm.trace({"input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}):
        h = envoy_value(env, site).save()
    return h[0].detach().float()


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_scores_equal_a_teacher_forced_forward(spec):
    m = load_model(spec)
    ex = [m.chat.encode("Tell me about the sea"), m.chat.encode("Hi")]
    g = torch.Generator().manual_seed(0)
    watches = [Watch("a", Site("resid_post", 1), torch.randn(m.d_model, generator=g)),
               Watch("b", Site("attn_out", 0), torch.randn(m.d_model, generator=g)),
               Watch("c", Site("v", 1), torch.randn(site_width(m, Site("v", 1)), generator=g))]
    traces = monitor(m, ex, watches, max_new_tokens=5, score="projection", batch_size=2, stop_at_eos=False)
    for e, t in zip(ex, traces, strict=True):
        assert len(t.tokens) == 5
        full = torch.tensor([list(e.ids) + t.token_ids])
        P = len(e.ids)
        for w in watches:
            ref = _forward_reads(m, full, w.site)[P - 1:P - 1 + len(t.tokens)] @ w.vector
            np.testing.assert_allclose(t.scores[w.key], ref.double().numpy(), atol=1e-4, rtol=1e-4)
    # cosine is the projection divided by the activation norm: bounded by 1
    cos = monitor(m, ex, watches, max_new_tokens=5, batch_size=1)
    assert all(np.abs(v).max() <= 1 + 1e-9 for t in cos for v in t.scores.values())
    assert [t.text for t in cos] == [t.text for t in traces]


def test_monitoring_while_steering_generates_the_steered_text():
    m = load_model("tiny-llama")
    ex = [m.chat.encode("Hello there")]
    v = torch.ones(m.d_model)
    steer = Steer(Site("resid_pre", 1), v, 6.0)
    watched = monitor(m, ex, [Watch("w", Site("resid_pre", 1), v)], max_new_tokens=4, steers=[steer],
                      score="projection", stop_at_eos=False)
    plain = monitor(m, ex, [Watch("w", Site("resid_pre", 1), v)], max_new_tokens=4, score="projection",
                    stop_at_eos=False)
    assert watched[0].text == generate_steered(m, ex, [steer], max_new_tokens=4)[0]
    # the watch at the steered site sees the steer's delta at the first step (same prompt state)
    unit = v / v.norm()
    assert watched[0].scores["w@resid_pre@1"][0] - plain[0].scores["w@resid_pre@1"][0] == pytest.approx(
        float(steer.delta @ unit), abs=1e-4)


def test_frame_and_errors():
    m = load_model("tiny-llama")
    t = TokenTrace("p", ["a", "b"], "ab", [1, 2], {"x@resid_pre@0": np.array([0.1, 0.2])})
    assert t.frame().score.tolist() == [0.1, 0.2]
    with pytest.raises(ValueError, match="nothing to monitor"):
        monitor(m, [m.chat.encode("x")], [], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        monitor(m, [], [Watch("w", Site("resid_pre", 0), torch.ones(m.d_model))], max_new_tokens=2)
    with pytest.raises(ValueError, match="dims"):
        monitor(m, [m.chat.encode("x")], [Watch("w", Site("resid_pre", 0), torch.ones(3))], max_new_tokens=2)
    with pytest.raises(ValueError, match="non-zero"):
        Watch("w", Site("resid_pre", 0), torch.zeros(4))
    with pytest.raises(ValueError, match="layer"):
        monitor(m, [m.chat.encode("x")], [Watch("w", Site("resid_pre", 99), torch.ones(m.d_model))],
                max_new_tokens=2)
