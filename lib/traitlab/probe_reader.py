"""Reading a 0–100 label off a model's activations: a ridge line from the mean residual stream
over an answer's tokens, fitted on labelled gold answers.

A small judge asked for a number reads some traits coarsely or backwards (the 1.5B judge scores
clean refusals *lower* for refusal than compliant answers). What it cannot say it may still
represent: the same model, reading the answer as its own reply to the question, often carries the
label linearly in its residual stream. ``fit`` finds that line on the gold sets' *tune* part, and
a report reads the held-out part with it, out of sample.

- **Features** (``answer_features``): the answer framed as the reader's own reply to the question
  (its chat template), ``resid_post`` at every layer averaged over the answer's tokens
  (``activations.extract(position="mean")``, so the disk cache keyed by model and token ids serves
  a rerun). An empty answer has no tokens to average: its row is NaN and its reading NaN.
- **Fit** (``fit``): per layer, features standardised on the training rows and a ridge line in
  closed form (``ridge``); the layer and penalty are chosen by Pearson r of out-of-fold predictions
  over ``FOLDS`` folds of whole questions (``group_folds``: answers to one question never sit on
  both sides), then refitted on every training row. Nothing about the held-out rows is seen.
- **Reading** (``ProbeReader.predict``): on the label's 0–100 scale, unclipped (a reading past
  the ends says the answer lies past the gold set's extremes).

Example (a tiny random model; labels that its features carry by construction):
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = {0: rng.normal(size=(40, 8)), 1: rng.normal(size=(40, 8))}
    >>> y = 50 + 10 * x[1][:, 0]
    >>> probe = fit(x, y, groups=np.arange(40) // 4, target="demo", reader="toy")
    >>> probe.layer, probe.cv_r > 0.99, float(np.abs(probe.predict(x[1]) - y).max()) < 1.0
    (1, True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import judge_power
from . import uncertainty as unc
from .activations import extract
from .models import LoadedModel
from .sites import Site

ALPHAS: tuple[float, ...] = tuple(10.0 ** k for k in range(0, 7))
"""Ridge penalties tried, on standardised features (1 … 10⁶; the fit picks one by grouped CV)."""

FOLDS = 5
"""Cross-validation folds of whole questions for choosing the layer and the penalty."""

SITE = "resid_post"
"""Where the features are read: the residual stream after each layer."""


class ProbeError(ValueError):
    """Training data a probe cannot be fitted on (too few questions, constant labels, ...)."""


@dataclass(frozen=True, eq=False)
class ProbeReader:
    """A fitted reading: ``predict(x) = ((x − mean) / scale) · weights + intercept``.

    ``target`` is what it reads (a trait or "coherence"), ``reader`` the model identity its
    features come from, ``layer`` and ``alpha`` what the grouped CV chose, ``cv_r`` that CV's
    Pearson r on the training rows, ``n_train`` / ``n_groups`` what it was fitted on.
    """

    target: str
    reader: str
    layer: int
    alpha: float
    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    intercept: float
    cv_r: float
    n_train: int
    n_groups: int

    @property
    def site(self) -> Site:
        return Site(SITE, self.layer)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Readings of feature rows ``x`` ([n, d] at ``self.layer``), NaN where a row is NaN."""
        return ((np.asarray(x, float) - self.mean) / self.scale) @ self.weights + self.intercept

    def text(self) -> str:
        return (f"{self.target} probe: {self.site}, ridge α = {self.alpha:g}, fitted on {self.n_train} "
                f"answers to {self.n_groups} questions (cross-validated r = {self.cv_r:.2f})")


def answer_features(model: LoadedModel, items: Sequence[tuple[str, str]], layers: Sequence[int] | None = None,
                    *, batch_size: int = 8, progress: bool = True, cache: bool = True) -> dict[int, np.ndarray]:
    """Per layer, the reader's mean ``resid_post`` over each (question, answer)'s answer tokens,
    [n, d] float64; NaN rows for empty answers. ``layers``: default every layer."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    enc = [model.chat.encode(q, a) for q, a in items]
    keep = [i for i, e in enumerate(enc) if e.prompt_len < len(e.ids)]
    sites = [Site(SITE, layer) for layer in layers]
    out = {layer: np.full((len(items), model.d_model), np.nan) for layer in layers}
    if keep:
        acts = extract(model, [enc[i] for i in keep], sites, position="mean", batch_size=batch_size,
                       cache=cache, progress=progress)
        for layer, s in zip(layers, sites, strict=True):
            out[layer][keep] = acts[s].float().numpy()
    return out


def ridge(z: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Ridge weights of centred ``y`` on column-centred ``z`` for each penalty, [len(alphas), d]:
    ``w = (zᵀz + α I)⁻¹ zᵀ y`` computed through the SVD of ``z`` (one decomposition serves every α).

    >>> z = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    >>> ridge(z, np.array([2.0, -2.0, 4.0, -4.0]), [0.0, 2.0]).round(3).tolist()
    [[2.0, 2.0], [1.0, 1.6]]
    """
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    uy = u.T @ y
    return np.stack([vt.T @ (s / (s ** 2 + a) * uy) for a in alphas])


def group_folds(groups: Sequence, k: int) -> np.ndarray:
    """Fold index per row: distinct groups in order of first appearance, dealt round-robin to
    ``k`` folds, so rows of one group always share a fold.

    >>> group_folds(["a", "a", "b", "c", "b", "d"], 3).tolist()
    [0, 0, 1, 2, 1, 0]
    """
    order = {g: i % k for i, g in enumerate(dict.fromkeys(groups))}
    return np.array([order[g] for g in groups], dtype=int)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = x.mean(0), x.std(0)
    return mean, np.where(scale > 1e-8 * max(float(scale.max()), 1e-30), scale, 1.0)


def fit(features: Mapping[int, np.ndarray], labels: Sequence[float], groups: Sequence, *, target: str,
        reader: str, alphas: Sequence[float] = ALPHAS, folds: int = FOLDS) -> ProbeReader:
    """The ridge reading of ``labels`` from ``features`` (per layer, [n, d]) with the layer and
    penalty chosen by grouped cross-validation (see the module docstring). Rows with a NaN
    feature or label are left out.

    Raises ``ProbeError`` with fewer than ``folds`` distinct groups, or labels that do not vary.
    """
    y_all = np.asarray(labels, float)
    layers = sorted(features)
    if not layers:
        raise ProbeError("no layers to fit a probe on")
    ok = np.isfinite(y_all) & np.all([np.isfinite(features[la]).all(1) for la in layers], axis=0)
    y, g = y_all[ok], np.asarray(groups, dtype=object)[ok]
    n_groups = len(dict.fromkeys(g))
    if n_groups < folds:
        raise ProbeError(f"a {target} probe needs answers to at least {folds} questions to cross-validate; "
                         f"got {n_groups} (add gold rows to the tune split)")
    if np.ptp(y) == 0:
        raise ProbeError(f"the {target} labels do not vary ({y[0]:g} throughout): nothing to fit")
    fold = group_folds(list(g), folds)
    best: tuple[float, int, int] | None = None  # (cv r, layer, alpha index)
    for layer in layers:
        x = features[layer][ok]
        oof = np.empty((len(alphas), len(y)))
        for f in range(folds):
            tr, te = fold != f, fold == f
            mean, scale = _standardise(x[tr])
            w = ridge((x[tr] - mean) / scale, y[tr] - y[tr].mean(), alphas)
            oof[:, te] = (((x[te] - mean) / scale) @ w.T + y[tr].mean()).T
        for a in range(len(alphas)):
            r = unc.pearson(oof[a], y)
            if np.isfinite(r) and (best is None or r > best[0]):
                best = (r, layer, a)
    if best is None:
        raise ProbeError(f"no layer gave a {target} reading that varies: every cross-validated prediction is constant")
    r, layer, a = best
    x = features[layer][ok]
    mean, scale = _standardise(x)
    w = ridge((x - mean) / scale, y - y.mean(), [alphas[a]])[0]
    return ProbeReader(target=target, reader=reader, layer=layer, alpha=float(alphas[a]), mean=mean, scale=scale,
                       weights=w, intercept=float(y.mean()), cv_r=float(r), n_train=len(y), n_groups=n_groups)


def check_gold_fit(traits: Sequence[str], *, split: str = "tune", folder: str | Path | None = None,
                   coherence: bool = True, folds: int = FOLDS) -> None:
    """Before model work: ``fit_gold`` can fit on the ``split`` part of each trait's gold set
    (answers to at least ``folds`` questions, labels that vary; with ``coherence``, coherence
    labels that vary over them all); else a one-line ``ProbeError`` naming the file.

    >>> check_gold_fit(["optimism", "refusal"])
    """
    parts = []
    for t in traits:
        g = judge_power.load_gold(t, split, folder)
        where = judge_power.gold_path(t, folder)
        if g.question.nunique() < folds:
            raise ProbeError(f"{where}: a probe needs answers to at least {folds} questions in its {split} "
                             f"split to cross-validate; it has {g.question.nunique()}")
        if np.ptp(g.label.to_numpy(float)) == 0:
            raise ProbeError(f"{where}: the {t} labels of the {split} split do not vary: nothing to fit")
        parts.append(g.coherence.to_numpy(float))
    if coherence and parts and np.ptp(np.concatenate(parts)) == 0:
        raise ProbeError(f"the coherence labels of the {split} splits of {list(traits)} do not vary: "
                         "nothing to fit")


def fit_gold(model: LoadedModel, traits: Sequence[str], *, split: str = "tune", coherence: bool = True,
             folder: str | Path | None = None, progress: bool = True) -> dict[str, ProbeReader]:
    """One probe per trait in ``traits`` (its gold label: ``judge_power.gold_path``, in ``folder``
    where it holds one, else ``data/judge/gold_<trait>.jsonl``) and,
    with ``coherence``, one for ``"coherence"`` (every named gold set's coherence labels together),
    each fitted through ``model`` on the gold sets' ``split`` part (the *tune* part: a report that
    reads the held-out part reads it out of sample). Answers to one question share a fold."""
    if not traits:
        raise ProbeError("fit_gold needs at least one trait with a gold set")
    parts = [judge_power.load_gold(t, split, folder) for t in traits]
    gold = pd.concat(parts, ignore_index=True)
    # one extraction per gold set, so its activation cache serves any other choice of traits
    per = [answer_features(model, list(zip(g.question, g.response, strict=True)), progress=progress) for g in parts]
    feats = {la: np.concatenate([f[la] for f in per]) for la in per[0]}
    ident, groups = reader_identity(model), (gold.trait + "\n" + gold.question).to_numpy()
    out = {}
    for t in traits:
        k = (gold.trait == t).to_numpy()
        out[t] = fit({la: x[k] for la, x in feats.items()}, gold.label[k], groups[k], target=t, reader=ident)
    if coherence:
        out["coherence"] = fit(feats, gold.coherence, groups, target="coherence", reader=ident)
    return out


def read(probe: ProbeReader, model: LoadedModel, items: Sequence[tuple[str, str]], *, batch_size: int = 8,
         progress: bool = True, cache: bool = True) -> np.ndarray:
    """``probe``'s readings of (question, answer) ``items`` through ``model`` (which must be the
    reader it was fitted on); NaN for empty answers."""
    return read_many({probe.target: probe}, model, items, batch_size=batch_size, progress=progress,
                     cache=cache)[probe.target]


def read_many(probes: Mapping[str, ProbeReader], model: LoadedModel, items: Sequence[tuple[str, str]], *,
              batch_size: int = 8, progress: bool = True, cache: bool = True) -> dict[str, np.ndarray]:
    """Every probe's readings of ``items`` (keyed as ``probes``) from one pass of ``model`` over
    them, at the layers the probes use; each probe must have been fitted on ``model``."""
    for p in probes.values():
        if reader_identity(model) != p.reader:
            raise ProbeError(f"this {p.target} probe was fitted on {p.reader}'s activations, "
                             f"not {reader_identity(model)}'s; fit it on this model")
    layers = sorted({p.layer for p in probes.values()})
    x = answer_features(model, items, layers, batch_size=batch_size, progress=progress, cache=cache)
    return {name: p.predict(x[p.layer]) for name, p in probes.items()}


def reader_identity(model: LoadedModel) -> str:
    """What a probe's features depend on: the model, its weights and its dtype."""
    return f"{model.spec}@{model.fingerprint[:12]}:{model.dtype}"
