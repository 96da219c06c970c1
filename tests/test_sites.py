"""Sites read exactly what transformers and plain PyTorch hooks see, on every tiny architecture."""

from __future__ import annotations

import pytest
import torch

from traitlab.activations import extract
from traitlab.sites import SITE_NAMES, Site, SiteError, check_sites, module_path, resolve


def _ids(model):
    e = model.chat.encode("What is the capital of France?", "Paris, of course.")
    return e, torch.tensor([e.ids])


def test_resid_equals_hidden_states(tiny):
    e, ids = _ids(tiny)
    with torch.no_grad():
        hs = tiny.hf(ids, output_hidden_states=True).hidden_states
    sites = [Site(n, layer) for layer in range(tiny.n_layers) for n in ("resid_pre", "resid_post")]
    acts = extract(tiny, [e], sites, position="all", cache=False, progress=False)
    for layer in range(tiny.n_layers):
        assert torch.equal(acts[Site("resid_pre", layer)], hs[layer][0])
    for layer in range(tiny.n_layers - 1):
        assert torch.equal(acts[Site("resid_post", layer)], hs[layer + 1][0])
    # transformers applies the final norm to its last hidden state; resid_post does not.
    last = acts[Site("resid_post", tiny.n_layers - 1)]
    with torch.no_grad():
        normed = resolve(tiny.hf, "model.norm")(last[None])[0]
    torch.testing.assert_close(normed, hs[-1][0], rtol=0, atol=1e-6)


def test_components_equal_forward_hooks(tiny):
    e, ids = _ids(tiny)
    seen: dict[str, torch.Tensor] = {}
    handles = []
    sites = [Site(n, layer) for layer in range(tiny.n_layers) for n in ("v", "attn_out", "mlp_out")]
    for s in sites:
        module = resolve(tiny.hf, module_path(tiny.arch, s))

        def hook(_m, _inp, out, key=str(s)):
            seen[key] = (out[0] if isinstance(out, tuple) else out)[0].detach().clone()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            tiny.hf(ids)
    finally:
        for h in handles:
            h.remove()
    acts = extract(tiny, [e], sites, position="all", cache=False, progress=False)
    for s in sites:
        assert torch.equal(acts[s], seen[str(s)]), s


def test_site_grammar():
    s = Site.parse("mlp_out@7")
    assert (s.name, s.layer, str(s)) == ("mlp_out", 7, "mlp_out@7")
    assert sorted([Site("resid_post", 1), Site("resid_pre", 1), Site("v", 0)], key=lambda x: x.order) == [
        Site("v", 0), Site("resid_pre", 1), Site("resid_post", 1)]
    assert SITE_NAMES[0] == "resid_pre" and SITE_NAMES[-1] == "resid_post"


@pytest.mark.parametrize("bad", ["resid@3", "resid_pre", "resid_pre@x", "attn_out@-1"])
def test_bad_site_names(bad):
    with pytest.raises(SiteError):
        Site.parse(bad)


def test_site_checks():
    with pytest.raises(SiteError, match="out of range; the model has layers 0..1"):
        check_sites([Site("resid_pre", 2)], "llama", 2)
    with pytest.raises(SiteError, match="'v' is not available for 'gpt2'"):
        check_sites([Site("v", 0)], "gpt2", 2)
    with pytest.raises(SiteError, match="no site layout"):
        module_path("mamba", Site("resid_pre", 0))
