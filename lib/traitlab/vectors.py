"""Vectors as files: save / load with provenance, llama.cpp export, peer converters.

A saved vector is two files side by side, ``<stem>.safetensors`` (the tensors, one per
site, named by the site: ``"resid_post@12"``) and ``<stem>.json`` (the provenance sidecar:
model id and fingerprint, site, method, trait, seed, norms, fit parameters, traitlab
version, git commit, and the sha256 of the tensor file). A sidecar rather than safetensors
metadata because (1) the checksum of a file cannot live inside the bytes it covers, (2) any
tool (``jq``, a browser, a diff) reads the provenance without a tensor library, and (3) the
tensor file stays a plain safetensors file that every reader loads. Both files are written
atomically, tensors first: a run killed between the two leaves a sidecar whose checksum
no longer matches, which ``load_vector`` reports instead of trusting.

Public names:

- ``VectorArtifact``: one or more vectors (one per site) and their provenance;
  ``.direction()`` gives a ``Direction`` back, ``.steers(coef)`` a list of ``Steer``.
- ``as_artifact``, ``save_vector``, ``load_vector``, ``load_direction``, ``save_directions``,
  ``default_name``.
- ``to_llama_gguf`` / ``from_llama_gguf``: llama.cpp's control-vector GGUF
  (``--control-vector``).
- ``to_steering_vector`` / ``from_steering_vector`` (steering-vectors' ``SteeringVector``),
  ``to_control_vector`` / ``from_control_vector`` (repeng's ``ControlVector``).
- ``VectorError``: every failure, as one line naming the file and the fix.

Layer conventions, each checked in the peer's source:

- llama.cpp adds tensor ``direction.N`` to the output of layer ``N`` (``build_cvec(cur, il)``
  after the layer's last residual add; ``llama_adapter_cvec::apply`` stores layer ``il`` at
  offset ``(il - 1) * n_embd``), i.e. our ``resid_post@N``; layer 0 cannot be expressed and
  ``N >= n_layer`` is silently ignored by llama.cpp, so both are refused here.
- repeng's ``ControlModel`` adds ``directions[N]`` to the output of ``model.layers[N]``:
  ``resid_post@N`` (its ``export_gguf`` writes ``direction.N`` for it, the same convention).
- steering-vectors adds ``layer_activations[N]`` to the output of the module matched by
  ``layer_type``: ``decoder_block`` → ``resid_post@N``, ``self_attn`` → ``attn_out@N``,
  ``mlp`` → ``mlp_out@N``.

``resid_pre@N`` is the same tensor as ``resid_post@(N-1)``, so exporters map it there.

Example:
    >>> import torch, tempfile
    >>> from traitlab.directions import Direction
    >>> d = Direction(torch.tensor([0.6, 0.8]), "mean_diff", "resid_post@1", "tiny-llama",
    ...               "optimism", 0, 5.0)
    >>> path = save_vector(d, tempfile.mkdtemp() + "/optimism")
    >>> back = load_direction(path)
    >>> back.site, back.method, back.raw_norm, torch.equal(back.vector, d.vector)
    ('resid_post@1', 'mean_diff', 5.0, True)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path, write_bytes, write_json
from .directions import Direction
from .sites import Site, SiteError

FORMAT = "traitlab.vector/1"
"""The sidecar's ``format`` field; a reader refuses any other."""


class VectorError(ValueError):
    """A vector file that cannot be saved, loaded, exported or converted as asked."""


# ----------------------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VectorArtifact:
    """Vectors, one per site (``"resid_post@12"`` → [d_model]), with their provenance.

    ``raw_norms[site]`` is the norm before normalisation (nan when unknown); ``norms`` the
    norm of the stored tensor (1.0 for a ``Direction``'s unit vector). ``source`` is the
    file it was loaded from (for error messages), not part of the provenance.
    """

    vectors: Mapping[str, torch.Tensor] = field(repr=False)
    method: str | None = None
    trait: str | None = None
    model: str | None = None
    fingerprint: str | None = None
    seed: int | None = None
    raw_norms: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)  # traitlab_version, git_commit, created
    source: str | None = field(default=None, compare=False)

    @property
    def sites(self) -> list[str]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def norms(self) -> dict[str, float]:
        return {s: float(v.float().norm()) for s, v in self.vectors.items()}

    def provenance(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-ready data (what the sidecar holds)."""
        return {"format": FORMAT, "d_model": self.d_model, "method": self.method,
                "trait": self.trait, "model": self.model, "fingerprint": self.fingerprint,
                "seed": self.seed, "params": dict(self.params), **dict(self.meta),
                "sites": {s: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                              "norm": float(v.float().norm()),
                              "raw_norm": _num(self.raw_norms.get(s, math.nan))}
                          for s, v in self.vectors.items()}}

    def direction(self, site: str | None = None) -> Direction:
        """The ``Direction`` at ``site`` (may be omitted when there is only one)."""
        if site is None:
            if len(self.vectors) != 1:
                raise VectorError(f"{self._where()}holds {len(self.vectors)} sites "
                                  f"({', '.join(self.vectors)}); pass site= to pick one")
            site = next(iter(self.vectors))
        if site not in self.vectors:
            raise VectorError(f"{self._where()}has no vector at {site}; it has {', '.join(self.vectors)}")
        return Direction(self.vectors[site], self.method or "unknown", site, self.model, self.trait,
                         0 if self.seed is None else self.seed,
                         float(self.raw_norms.get(site, math.nan)),
                         fingerprint=self.fingerprint, params=dict(self.params) or None)

    def check_model(self, model: Any) -> None:
        """Raise ``VectorError`` unless every site exists in ``model`` (a ``LoadedModel``)
        and the vectors have its width."""
        if self.d_model != model.d_model:
            raise VectorError(f"{self._where()}has d_model {self.d_model} but model {model.spec!r} has "
                              f"{model.d_model}; use a vector made for a model of this width")
        from .sites import check_sites

        try:
            check_sites([Site.parse(s) for s in self.vectors], model.arch, model.n_layers)
        except SiteError as err:
            raise VectorError(f"{self._where()}{err}; use a vector made for {model.spec!r}") from None

    def steers(self, coef: float, model: Any = None) -> list:
        """One ``Steer`` per site with ``coef`` (checked against ``model`` when given)."""
        from .steering import Steer

        if model is not None:
            self.check_model(model)
        return [Steer(s, v, coef) for s, v in self.vectors.items()]

    def _where(self) -> str:
        return f"{self.source}: " if self.source else "vectors: "


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj or {}, sort_keys=True, default=str))


def _site_key(site: Any) -> str:
    try:
        return str(site if isinstance(site, Site) else Site.parse(str(site)))
    except SiteError as err:
        raise VectorError(f"{err}") from None


def as_artifact(obj: Any, *, model: Any = None, params: Any = None, method: str | None = None,
                trait: str | None = None) -> VectorArtifact:
    """A ``VectorArtifact`` from a ``Direction``, a ``{site: Direction | tensor}`` mapping or
    an artifact; ``model`` (a ``LoadedModel``) adds its spec and fingerprint and is checked
    against the vectors; ``params`` (a dict or dataclass) are recorded as fit parameters.

    >>> a = as_artifact({"resid_pre@1": torch.ones(4)}, method="mean_diff")
    >>> a.sites, a.norms, a.d_model
    (['resid_pre@1'], {'resid_pre@1': 2.0}, 4)
    """
    if isinstance(obj, VectorArtifact):
        art = obj
    else:
        if isinstance(obj, Direction):
            if obj.site is None:
                raise VectorError("this Direction has no site; fit it with site=... or pass {site: direction}")
            obj = {obj.site: obj}
        if not isinstance(obj, Mapping) or not obj:
            raise VectorError(f"expected a Direction, a non-empty {{site: vector}} mapping or a "
                              f"VectorArtifact, got {type(obj).__name__}")
        vectors, raw, dirs = {}, {}, []
        for site, v in obj.items():
            key = _site_key(site)
            if isinstance(v, Direction):
                dirs.append(v)
                raw[key] = v.raw_norm
                v = v.vector
            if not isinstance(v, torch.Tensor) or v.ndim != 1 or not v.is_floating_point():
                raise VectorError(f"{key}: a vector must be a 1-D float tensor, got "
                                  f"{getattr(v, 'shape', type(v).__name__)}")
            vectors[key] = v.detach().cpu().contiguous()
        widths = {v.shape[0] for v in vectors.values()}
        if len(widths) != 1:
            raise VectorError(f"vectors of different widths {sorted(widths)} cannot share one file")

        def common(attr: str) -> Any:
            vals = {getattr(d, attr) for d in dirs if getattr(d, attr) is not None}
            return vals.pop() if len(vals) == 1 else None

        fit = [d.params for d in dirs if d.params]
        art = VectorArtifact(
            dict(sorted(vectors.items(), key=lambda kv: Site.parse(kv[0]).order)),
            method=common("method"), trait=common("trait"), model=common("model"),
            fingerprint=common("fingerprint"), seed=common("seed"), raw_norms=raw,
            params=fit[0] if fit else {})
    changes: dict[str, Any] = {}
    if method is not None:
        changes["method"] = method
    if trait is not None:
        changes["trait"] = trait
    if params is not None:
        changes["params"] = _jsonable(params)
    if model is not None:
        art.check_model(model)
        changes["model"], changes["fingerprint"] = model.spec, model.fingerprint
    return dataclasses.replace(art, **changes) if changes else art


# ----------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------

def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path).expanduser()
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _versions() -> dict[str, Any]:
    from importlib import metadata

    from .runinfo import git_commit

    try:
        version = metadata.version("traitlab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"traitlab_version": version, "git_commit": git_commit(),
            "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def save_vector(obj: Any, path: str | os.PathLike, *, model: Any = None, params: Any = None,
                method: str | None = None, trait: str | None = None) -> Path:
    """Write ``obj`` (see ``as_artifact``) as ``<path>.safetensors`` + ``<path>.json``;
    returns the safetensors path. ``path`` may carry either suffix or none.

    >>> import tempfile
    >>> p = save_vector({"resid_post@3": torch.zeros(8)}, tempfile.mkdtemp() + "/v.json")
    >>> p.name, p.with_suffix(".json").exists()
    ('v.safetensors', True)
    """
    from safetensors.torch import save

    art = as_artifact(obj, model=model, params=params, method=method, trait=trait)
    tensor_path, sidecar = _paths(path)
    blob = save(dict(art.vectors), metadata={"format": FORMAT, "sidecar": sidecar.name})
    art = dataclasses.replace(art, meta=_versions())
    record = {**art.provenance(), "tensor_file": tensor_path.name,
              "sha256": hashlib.sha256(blob).hexdigest()}
    write_bytes(tensor_path, blob)
    write_json(sidecar, record)
    return tensor_path


def load_vector(path: str | os.PathLike, *, model: Any = None) -> VectorArtifact:
    """Read a vector saved by ``save_vector``, verifying the tensor file's sha256 and every
    shape against the sidecar; with ``model`` also its width and layers."""
    from safetensors.torch import load

    tensor_path, sidecar = _paths(path)
    if not tensor_path.is_file():
        raise VectorError(f"{tensor_path}: vector file not found; save it with "
                          "traitlab.vectors.save_vector or check the path")
    if not sidecar.is_file():
        raise VectorError(f"{sidecar}: provenance sidecar missing for {tensor_path.name}; copy the "
                          ".json saved next to it, or re-save the vector with save_vector")
    try:
        rec = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VectorError(f"{sidecar}: not valid JSON ({err.msg if hasattr(err, 'msg') else err}); "
                          "re-save the vector with save_vector") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        got = rec.get("format") if isinstance(rec, dict) else type(rec).__name__
        raise VectorError(f"{sidecar}: format {got!r} is not {FORMAT!r}; is this a traitlab vector sidecar?")
    blob = tensor_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != rec.get("sha256"):
        raise VectorError(f"{tensor_path}: sha256 {digest[:12]}… does not match {rec.get('sha256', '')[:12]}… "
                          f"in {sidecar.name}: the file is truncated or corrupted; re-save it from its source")
    try:
        tensors = load(blob)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise VectorError(f"{tensor_path}: unreadable safetensors ({err}); re-save it") from None
    sites = rec.get("sites") or {}
    if set(sites) != set(tensors):
        raise VectorError(f"{sidecar}: lists sites {sorted(sites)} but {tensor_path.name} holds "
                          f"{sorted(tensors)}; the two files do not belong together: re-save the vector")
    for s, info in sites.items():
        want = [rec.get("d_model")]
        if list(tensors[s].shape) != want or list(info.get("shape", [])) != want:
            raise VectorError(f"{sidecar}: {s} should have shape {info.get('shape')} (d_model "
                              f"{rec.get('d_model')}) but {tensor_path.name} holds "
                              f"{list(tensors[s].shape)}; the files do not belong together: re-save the vector")
    keys = ("traitlab_version", "git_commit", "created")
    art = VectorArtifact(
        {s: tensors[s] for s in sorted(sites, key=lambda s: Site.parse(s).order)},
        method=rec.get("method"), trait=rec.get("trait"),
        model=rec.get("model"), fingerprint=rec.get("fingerprint"), seed=rec.get("seed"),
        raw_norms={s: math.nan if i.get("raw_norm") is None else float(i["raw_norm"])
                   for s, i in sites.items()},
        params=rec.get("params") or {}, meta={k: rec[k] for k in keys if k in rec},
        source=str(tensor_path))
    if model is not None:
        art.check_model(model)
    return art


def load_direction(path: str | os.PathLike, site: str | None = None, *, model: Any = None) -> Direction:
    """``load_vector(path, model=model).direction(site)``."""
    return load_vector(path, model=model).direction(site)


def default_name(d: Direction) -> str:
    """A file stem for a direction: ``<trait>.<method>.<site name>-L<layer>``.

    >>> default_name(Direction(torch.ones(2), "probe", "attn_out@12", None, "optimism"))
    'optimism.probe.attn_out-L12'
    """
    site = Site.parse(d.site) if d.site else None
    where = f"{site.name}-L{site.layer}" if site else "nosite"
    return ".".join([d.trait or "trait", d.method, where])


def save_directions(directions: Iterable[Direction], folder: str | os.PathLike, *, model: Any = None,
                    params: Any = None) -> list[Path]:
    """Save each direction as ``folder/default_name(d)``; returns the safetensors paths.

    The one call a report makes to write the vectors it used."""
    out = []
    for d in directions:
        out.append(save_vector(d, Path(folder) / default_name(d), model=model, params=params))
    return out


def _bundle_key(d: Direction, i: int) -> str:
    return f"{d.trait or 'trait'}/{d.method}/{d.site or 'nosite'}/seed{d.seed}" if d.site else f"vector{i}"


def save_bundle(directions: Iterable[Direction], path: str | os.PathLike, *, model: Any = None,
                params: Any = None) -> Path | None:
    """Save many directions (traits × methods × sites) as one safetensors file plus a JSON
    sidecar listing each key's provenance (``<trait>/<method>/<site>/seed<k>``) and the file's
    sha256. Returns the safetensors path, or None when there is nothing to save.

    >>> import tempfile
    >>> d = Direction(torch.tensor([0.6, 0.8]), "probe", "resid_post@1", None, "optimism")
    >>> p = save_bundle([d], tempfile.mkdtemp() + "/run.vectors")
    >>> sorted(load_bundle(p))
    ['optimism/probe/resid_post@1/seed0']
    """
    dirs = list(directions)
    if not dirs:
        return None
    from safetensors.torch import save

    tensors_path = Path(str(path).removesuffix(".safetensors") + ".safetensors")
    sidecar = tensors_path.with_suffix(".json")
    tensors = {_bundle_key(d, i): d.vector.detach().cpu().float().contiguous() for i, d in enumerate(dirs)}
    blob = save(tensors, metadata={"format": "traitlab.vector_bundle/1", "sidecar": sidecar.name})
    write_bytes(tensors_path, blob)
    info = {"format": "traitlab.vector_bundle/1", "sha256": hashlib.sha256(blob).hexdigest(),
            "model": getattr(model, "spec", None), "fingerprint": getattr(model, "fingerprint", None),
            "params": _jsonable(dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params),
            **_versions(),
            "vectors": {_bundle_key(d, i): {"trait": d.trait, "method": d.method, "site": d.site,
                                            "seed": d.seed, "raw_norm": _num(d.raw_norm),
                                            "fit": _jsonable(d.params or {})}
                        for i, d in enumerate(dirs)}}
    write_json(sidecar, info)
    return tensors_path


def load_bundle(path: str | os.PathLike) -> dict[str, Direction]:
    """Read a bundle written by ``save_bundle``: key → ``Direction`` (checksum verified)."""
    tensors_path = Path(str(path).removesuffix(".safetensors") + ".safetensors")
    sidecar = tensors_path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text())
        blob = tensors_path.read_bytes()
    except FileNotFoundError as err:
        raise VectorError(f"{err.filename}: missing; re-render the report that wrote the bundle") from None
    except json.JSONDecodeError:
        raise VectorError(f"{sidecar}: not valid JSON; re-render the report that wrote the bundle") from None
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise VectorError(f"{tensors_path}: sha256 does not match {sidecar.name}; the file is truncated or "
                          "corrupted: re-render the report that wrote it")
    from safetensors.torch import load as _load

    tensors = _load(blob)
    out = {}
    for key, meta in info["vectors"].items():
        out[key] = Direction(tensors[key], meta["method"], meta["site"], info.get("model"), meta["trait"],
                             meta["seed"], meta["raw_norm"] if meta["raw_norm"] is not None else float("nan"),
                             fingerprint=info.get("fingerprint"), params=meta.get("fit"))
    return out


def publish_vectors(directions: Iterable[Direction], *, model: Any = None, params: Any = None) -> Path | None:
    """Write a report's vectors beside it as ``<report>.vectors.safetensors`` (+ ``.json``).

    ``traitlab render`` sets ``$TRAITLAB_RECORD_DIR`` and ``$TRAITLAB_RECORD_NAME``; without them
    (a notebook run by hand) nothing is written. Typical call, in a report's last cell:
    ``vectors.publish_vectors(directions.fitted(), model=lm, params=P)``.
    """
    folder, name = os.environ.get("TRAITLAB_RECORD_DIR"), os.environ.get("TRAITLAB_RECORD_NAME")
    if not folder or not name:
        return None
    return save_bundle(directions, Path(folder) / f"{name}.vectors", model=model, params=params)


# ----------------------------------------------------------------------------------------
# llama.cpp control vectors
# ----------------------------------------------------------------------------------------

def _post_layer(site: str) -> int:
    """The llama.cpp / repeng layer N whose output is ``site`` (``resid_post@N``)."""
    s = Site.parse(site)
    if s.name == "resid_post":
        return s.layer
    if s.name == "resid_pre" and s.layer >= 1:
        return s.layer - 1
    raise VectorError(f"{site}: llama.cpp and repeng add to each layer's output (resid_post@N, or "
                      f"resid_pre@N+1); {s.name}@{s.layer} cannot be expressed there")


def _by_layer(art: VectorArtifact, n_layers: int | None, what: str) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for site, v in art.vectors.items():
        n = _post_layer(site)
        if n in out:
            raise VectorError(f"{art._where()}two sites map to layer {n}'s output; add them into one vector")
        if n_layers is not None and n >= n_layers:
            raise VectorError(f"{art._where()}{site} is beyond the model's layers 0..{n_layers - 1}")
        out[n] = v
    if what == "gguf" and 0 in out:
        raise VectorError(f"{art._where()}llama.cpp cannot steer layer 0's output (resid_post@0); "
                          "use a vector at layer 1 or later")
    return dict(sorted(out.items()))


def to_llama_gguf(obj: Any, path: str | os.PathLike, *, coef: float = 1.0, model: Any = None,
                  model_hint: str | None = None) -> Path:
    """Write llama.cpp's control-vector GGUF (``llama-cli --control-vector PATH``).

    Tensors ``direction.N`` (float32, [d_model]) = ``coef`` × the vector at ``resid_post@N``
    (or ``resid_pre@N+1``); keys ``general.architecture = "controlvector"``,
    ``controlvector.model_hint`` (the model's architecture, as repeng writes it) and
    ``controlvector.layer_count``; ``traitlab.provenance`` holds the sidecar's JSON (llama.cpp
    ignores it). With ``model`` the sites are checked against its layers.

    >>> import tempfile
    >>> p = to_llama_gguf({"resid_post@2": torch.ones(4)}, tempfile.mkdtemp() + "/v.gguf", coef=2)
    >>> sorted(from_llama_gguf(p).vectors.items())
    [('resid_post@2', tensor([2., 2., 2., 2.]))]
    """
    import gguf

    art = as_artifact(obj, model=model)
    layers = _by_layer(art, model.n_layers if model is not None else None, "gguf")
    if not math.isfinite(coef):
        raise VectorError(f"coef must be finite, got {coef}")
    hint = model_hint or (model.arch if model is not None else None) or art.model or "unknown"
    target = Path(path).expanduser()
    with atomic_path(target) as tmp:
        w = gguf.GGUFWriter(str(tmp), "controlvector")
        w.add_string("controlvector.model_hint", hint)
        w.add_uint32("controlvector.layer_count", len(layers))
        w.add_string("traitlab.provenance", json.dumps({**art.provenance(), "coef": coef}, sort_keys=True))
        for n, v in layers.items():
            w.add_tensor(f"direction.{n}", (coef * v.double()).float().numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return target


_DIRECTION = re.compile(r"^direction\.(\d+)$")


def from_llama_gguf(path: str | os.PathLike, *, model: Any = None) -> VectorArtifact:
    """Read a llama.cpp control-vector GGUF (ours, repeng's or llama.cpp's own) as
    ``resid_post@N`` vectors; with ``model``, every layer must exist in it."""
    import gguf
    import numpy as np

    p = Path(path).expanduser()
    if not p.is_file():
        raise VectorError(f"{p}: control-vector file not found")
    try:
        reader = gguf.GGUFReader(str(p))
        arch_field = reader.fields.get("general.architecture")
        arch = bytes(arch_field.parts[-1]).decode() if arch_field else None
        tensors = [(t.name, np.array(t.data, dtype=np.float32), t.tensor_type) for t in reader.tensors]
        prov_field = reader.fields.get("traitlab.provenance")
        prov = json.loads(bytes(prov_field.parts[-1]).decode()) if prov_field else {}
    except Exception as err:  # noqa: BLE001 - the reader raises assorted errors on damaged files
        raise VectorError(f"{p}: not a readable GGUF file ({type(err).__name__}: {err}); "
                          "re-export it with to_llama_gguf") from None
    if arch != "controlvector":
        raise VectorError(f"{p}: general.architecture is {arch!r}, not 'controlvector'; "
                          "is this a model file rather than a control vector?")
    vectors: dict[int, torch.Tensor] = {}
    for name, data, ttype in tensors:
        m = _DIRECTION.match(name)
        if not m or int(m.group(1)) == 0:
            raise VectorError(f"{p}: tensor {name!r} is not direction.N with N >= 1; llama.cpp would "
                              "reject the file: re-export it")
        if ttype != gguf.GGMLQuantizationType.F32 or data.ndim != 1:
            raise VectorError(f"{p}: {name} must be a 1-D float32 tensor; re-export it")
        vectors[int(m.group(1))] = torch.from_numpy(data.copy())
    if not vectors:
        raise VectorError(f"{p}: no direction.N tensors; re-export the vector")
    if len({v.shape[0] for v in vectors.values()}) != 1:
        raise VectorError(f"{p}: direction tensors of different widths; re-export the vector")
    art = VectorArtifact(
        {f"resid_post@{n}": vectors[n] for n in sorted(vectors)}, method=prov.get("method"),
        trait=prov.get("trait"), model=prov.get("model"), fingerprint=prov.get("fingerprint"),
        seed=prov.get("seed"), params={**(prov.get("params") or {}),
                                       **({"coef": prov["coef"]} if "coef" in prov else {})},
        source=str(p))
    if model is not None:
        art.check_model(model)
    return art


# ----------------------------------------------------------------------------------------
# Peers: steering-vectors and repeng (imported lazily; pass cls= to use a stand-in)
# ----------------------------------------------------------------------------------------

_SV_TYPES = {"resid_post": "decoder_block", "attn_out": "self_attn", "mlp_out": "mlp"}


def to_steering_vector(obj: Any, *, cls: Any = None) -> Any:
    """A steering-vectors ``SteeringVector``; all sites must share one name (``resid_pre@N``
    becomes ``decoder_block`` N-1). Its ``apply(model, multiplier=coef, min_token_index=0)``
    steers as ``Steer(site, vector, coef)`` with ``positions="all"``."""
    if cls is None:
        from steering_vectors import SteeringVector as cls  # noqa: N813
    art = as_artifact(obj)
    layers: dict[int, torch.Tensor] = {}
    kinds = set()
    for site, v in art.vectors.items():
        s = Site.parse(site)
        if s.name == "resid_pre":
            s = Site("resid_post", _post_layer(site))
        if s.name not in _SV_TYPES:
            raise VectorError(f"{site}: steering-vectors has no layer type for {s.name}; use "
                              "resid_post, resid_pre, attn_out or mlp_out")
        kinds.add(s.name)
        if len(kinds) != 1:
            raise VectorError(f"{art._where()}mixes {sorted(kinds)}; a SteeringVector has one "
                              "layer_type: convert each kind separately")
        if s.layer in layers:
            raise VectorError(f"{art._where()}two sites map to {_SV_TYPES[s.name]} {s.layer}; add them "
                              "into one vector")
        layers[s.layer] = v
    return cls(layer_activations=dict(sorted(layers.items())), layer_type=_SV_TYPES[kinds.pop()])


def from_steering_vector(sv: Any, **provenance: Any) -> VectorArtifact:
    """A ``VectorArtifact`` from a ``SteeringVector`` (``provenance``: method=, trait=, ...)."""
    inverse = {v: k for k, v in _SV_TYPES.items()}
    name = inverse.get(sv.layer_type)
    if name is None:
        raise VectorError(f"SteeringVector layer_type {sv.layer_type!r} has no traitlab site; "
                          f"supported: {', '.join(inverse)}")
    out = {}
    for n, v in sv.layer_activations.items():
        if n < 0:
            raise VectorError(f"SteeringVector layer {n} is negative; re-index it from 0 first")
        out[f"{name}@{n}"] = torch.as_tensor(v).detach().cpu()
    return as_artifact(out, **provenance)


def to_control_vector(obj: Any, *, model_type: str | None = None, cls: Any = None) -> Any:
    """A repeng ``ControlVector`` (``directions[N]`` added to ``model.layers[N]``'s output).

    Note repeng's own training reads ``hidden_states[N]`` (the *input* of layer N) for the
    vector it then adds at layer N's output; converters map the place it is added."""
    import numpy as np

    if cls is None:
        from repeng import ControlVector as cls  # noqa: N813
    art = as_artifact(obj)
    layers = _by_layer(art, None, "repeng")
    hint = model_type or art.model or "unknown"
    return cls(model_type=hint, directions={n: np.asarray(v.float().numpy(), dtype=np.float32)
                                            for n, v in layers.items()})


def from_control_vector(cv: Any, **provenance: Any) -> VectorArtifact:
    """A ``VectorArtifact`` from a repeng ``ControlVector`` (``provenance``: method=, ...)."""
    out = {}
    for n, v in cv.directions.items():
        if n < 0:
            raise VectorError(f"ControlVector layer {n} is negative; re-index it from 0 first")
        out[f"resid_post@{int(n)}"] = torch.as_tensor(v).detach().cpu()
    return as_artifact(out, **provenance)
