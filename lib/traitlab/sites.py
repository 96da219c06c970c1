"""One naming grammar for intervention sites, mapped to module paths in one place.

A site is a name and a layer, written ``"<name>@<layer>"``:

==============  =====================================================  ====================
name            what it is                                             shape
==============  =====================================================  ====================
``resid_pre``   residual stream entering decoder layer L               [batch, pos, d_model]
                (= ``hidden_states[L]`` of transformers)
``v``           value projection of layer L's attention (the V-cache)  [batch, pos, n_kv*d_head]
``attn_out``    output of layer L's attention module (after o_proj)    [batch, pos, d_model]
``mlp_out``     output of layer L's MLP module                         [batch, pos, d_model]
``resid_post``  residual stream leaving layer L                        [batch, pos, d_model]
                (= ``hidden_states[L + 1]``)
==============  =====================================================  ====================

For Gemma-style blocks (post-attention / post-feed-forward norms) ``attn_out`` and
``mlp_out`` are the module outputs *before* those norms, i.e. what a forward hook on the
attention / MLP module sees.

Example:
    >>> s = Site.parse("attn_out@8"); s
    Site(name='attn_out', layer=8)
    >>> str(s), module_path("qwen2", s)
    ('attn_out@8', 'model.layers.8.self_attn')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

SiteName = Literal["resid_pre", "v", "attn_out", "mlp_out", "resid_post"]
SITE_NAMES: tuple[str, ...] = get_args(SiteName)  # in execution order within a layer


@dataclass(frozen=True)
class ArchLayout:
    """Where the pieces of a decoder layer live, relative to the model root."""

    layers: str  # the ModuleList of decoder layers
    attn: str  # attention module, relative to a layer
    mlp: str  # MLP module, relative to a layer
    v_proj: str | None  # value projection, relative to a layer (None: fused, unsupported)


_LLAMA_LIKE = ArchLayout(layers="model.layers", attn="self_attn", mlp="mlp", v_proj="self_attn.v_proj")

ARCH_LAYOUTS: dict[str, ArchLayout] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi3": ArchLayout(layers="model.layers", attn="self_attn", mlp="mlp", v_proj=None),
    "gpt2": ArchLayout(layers="transformer.h", attn="attn", mlp="mlp", v_proj=None),
}


class SiteError(ValueError):
    """An unknown site name, a layer out of range, or a site this architecture lacks."""


@dataclass(frozen=True, order=True)
class Site:
    """A site name at a layer, e.g. ``Site("resid_pre", 12)``; ordered by execution."""

    name: SiteName
    layer: int

    def __post_init__(self) -> None:
        if self.name not in SITE_NAMES:
            raise SiteError(f"unknown site {self.name!r}; choose one of {', '.join(SITE_NAMES)}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"layer must be a non-negative int, got {self.layer!r}")

    def __str__(self) -> str:
        return f"{self.name}@{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Site:
        name, sep, layer = text.partition("@")
        if not sep or not layer.isdigit():
            raise SiteError(f"site {text!r} is not of the form '<name>@<layer>', e.g. 'resid_pre@12'")
        return cls(name, int(layer))  # type: ignore[arg-type]

    @property
    def order(self) -> tuple[int, int]:
        """Execution order in a forward pass: layer first, then position within the layer."""
        return (self.layer, SITE_NAMES.index(self.name))


def layout(arch: str) -> ArchLayout:
    try:
        return ARCH_LAYOUTS[arch]
    except KeyError:
        raise SiteError(
            f"architecture {arch!r} has no site layout; known: {', '.join(sorted(ARCH_LAYOUTS))}. "
            "Add one to traitlab.sites.ARCH_LAYOUTS."
        ) from None


def module_path(arch: str, site: Site) -> str:
    """Dotted path, from the model root, of the module whose input/output is ``site``."""
    lay = layout(arch)
    base = f"{lay.layers}.{site.layer}"
    if site.name in ("resid_pre", "resid_post"):
        return base
    if site.name == "attn_out":
        return f"{base}.{lay.attn}"
    if site.name == "mlp_out":
        return f"{base}.{lay.mlp}"
    if lay.v_proj is None:
        raise SiteError(f"site 'v' is not available for {arch!r} (fused or missing value projection)")
    return f"{base}.{lay.v_proj}"


def reads_input(site: Site) -> bool:
    """True when the site is a module's input (``resid_pre``), False when its output."""
    return site.name == "resid_pre"


def check_sites(sites: list[Site], arch: str, n_layers: int) -> None:
    """Raise ``SiteError`` if any site is out of range or unavailable for ``arch``."""
    for s in sites:
        if s.layer >= n_layers:
            raise SiteError(f"{s}: layer {s.layer} out of range; the model has layers 0..{n_layers - 1}")
        module_path(arch, s)


def resolve(root: Any, path: str) -> Any:
    """Walk a dotted path (``model.layers.3.mlp``) on a torch module or an nnsight envoy."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple) else x


def envoy_value(envoy: Any, site: Site) -> Any:
    """Inside an nnsight trace: the tensor proxy of ``site`` on its module's envoy."""
    return envoy.input if reads_input(site) else _first(envoy.output)
