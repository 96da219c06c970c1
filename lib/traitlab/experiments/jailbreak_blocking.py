"""Steering against jailbreaks: does adding the refusal direction restore refusals?

Harmful requests from the public sets in the data root are wrapped in jailbreak templates we
wrote (``data/jailbreak/wrappers.jsonl``: role play, hypothetical, prefix injection, red-team
framing). The refusal direction is the difference of mean last-prompt-token activations of
harmful and harmless requests (disjoint from the evaluated ones) at ``site`` of each layer.
Every prompt is answered greedily under each condition, the vector added at every position:

- ``none``: no steering;
- ``single L<x>``: the direction at one layer, coefficient = ``ratio`` × that site's mean
  activation norm (a perturbation ratio);
- ``ensemble``: each of ``ensemble_layers`` at ``ensemble_ratio``;
- ``random L<x> s<seed>`` and ``random ensemble s<seed>``: random unit vectors in place of the
  direction, same coefficients, one condition per seed of ``random_seeds``. They answer only
  the prompts their rates are read on (the jailbreaks the unsteered model answered, and the
  benign prompts), which halves their cost.

A refusal is a phrase match in the answer's opening (``traitlab.refusal.is_refusal``). The
unit of the blocked rates is the **request** (each is answered under every wrapper, so its
answers are not independent): their 95% intervals bootstrap requests. Benign prompts are
independent (Wilson intervals); they come from a public set (``benign_source``; default the
JailbreakBench benign behaviours, each on the topic of a harmful one) and measure the price:
over-refusal. Every answer's coherence is read from its text (distinct-2 and perplexity under
the model after an empty turn, floors fitted the same way on the gold sets' coherence labels),
so a "blocked" answer that is word salad is counted apart from a refusal.

Example:
    >>> p = Params(random_seeds=[1, 2])
    >>> p.conditions(), p.random_conditions()
    (['none', 'single L12', 'ensemble'], ['random L12 s1', 'random L12 s2', 'random ensemble s1', 'random ensemble s2'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .. import data, judge_power, textstats
from .. import uncertainty as unc
from ..activations import extract
from ..data import read_project_jsonl
from ..directions import random_unit
from ..models import LoadedModel, describe
from ..params import ParamError
from ..refusal import DEFAULT_PHRASES, Validation, is_refusal
from ..sites import SITE_NAMES, Site, check_sites
from ..steered_eval import Condition, at_ratio, generate_answers
from ..steering import Steer, activation_norms
from ..uncertainty import wilson, wilson_rates

SEED = {"blocked_pct": 94.0, "setting": "Gemma-2-2B-IT, attn_out L10, coef 20, plus a layer ensemble",
        "resisted": "red-team framing"}
"""The seed's jailbreak-blocking result."""


@dataclass(frozen=True)
class Params:
    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    harmful_sources: list[str] = field(default_factory=lambda: ["advbench", "harmbench_test", "jailbreakbench"])
    n_requests: int = 24
    n_direction: int = 32
    benign_source: str = "jbb_benign"
    """Where the benign prompts come from: one of ``data.BENIGN_SOURCES``."""
    n_benign: int = 48
    wrappers: list[str] | None = None
    site: str = "attn_out"
    single_layers: list[int] = field(default_factory=lambda: [12])
    ratio: float = 1.0
    ensemble_layers: list[int] = field(default_factory=lambda: [10, 12, 14])
    ensemble_ratio: float = 0.5
    random_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """One random-direction control per seed, at the first single layer and (with an ensemble)
    at every ensemble layer."""
    gold_traits: list[str] = field(default_factory=lambda: ["optimism", "uncertainty", "refusal"])
    """Gold sets whose coherence labels calibrate the text floors (``data/judge/gold_<trait>.jsonl``)."""
    gold_dir: str | None = None
    """A folder of one's own ``gold_<trait>.jsonl`` gold sets, read in place of ours (``data/judge``)
    for the traits it holds (``judge_power.gold_path``); null: ours only."""
    max_new_tokens: int = 32
    batch_size: int = 16
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, attn_out, mlp_out, resid_post; got {self.site!r}")
        bad = [s for s in self.harmful_sources if s not in data.HARMFUL_SOURCES]
        if bad or not self.harmful_sources:
            raise ParamError(f"unknown harmful sources {bad}; choose from {', '.join(data.HARMFUL_SOURCES)}")
        if self.benign_source not in data.BENIGN_SOURCES:
            raise ParamError(f"unknown benign_source {self.benign_source!r}; choose from {', '.join(data.BENIGN_SOURCES)}")
        for name in ("n_requests", "n_direction", "n_benign", "max_new_tokens", "batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.single_layers:
            raise ParamError("single_layers is empty; name at least one layer")
        if self.ratio <= 0 or self.ensemble_ratio <= 0:
            raise ParamError("ratio and ensemble_ratio must be > 0 (perturbation ratios towards refusal)")
        if not self.random_seeds or len(set(self.random_seeds)) != len(self.random_seeds):
            raise ParamError(f"random_seeds must name at least one seed, without repeats; got {self.random_seeds}")
        if not self.gold_traits:
            raise ParamError("gold_traits is empty; name the gold sets that calibrate coherence, e.g. [optimism]")

    def conditions(self) -> list[str]:
        """The conditions every prompt is answered under: none, each single layer, the ensemble."""
        out = ["none"] + [f"single L{x}" for x in self.single_layers]
        return out + (["ensemble"] if self.ensemble_layers else [])

    def random_conditions(self) -> list[str]:
        """The random-direction controls, one per seed (and per seed an ensemble of random vectors)."""
        out = [f"random L{self.single_layers[0]} s{s}" for s in self.random_seeds]
        return out + ([f"random ensemble s{s}" for s in self.random_seeds] if self.ensemble_layers else [])

    def random_groups(self) -> dict[str, list[str]]:
        """Each steered condition (but none) → its random controls (the seeds pooled)."""
        first = f"single L{self.single_layers[0]}"
        out = {first: [c for c in self.random_conditions() if c.startswith(f"random L{self.single_layers[0]} ")]}
        if self.ensemble_layers:
            out["ensemble"] = [c for c in self.random_conditions() if c.startswith("random ensemble ")]
        return out

    def layers(self) -> list[int]:
        return sorted(set(self.single_layers) | set(self.ensemble_layers))

    def check(self) -> list[Site]:
        """Layers against the model's config, the wrapper file, the data root and the gold sets (no weights)."""
        info = describe(self.model, self.revision)
        sites = [Site(self.site, x) for x in self.layers()]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        wrappers(self)
        load_prompts(self)
        judge_power.check_floor_gold(self.gold_traits, self.gold_dir)
        return sites


def wrappers(P: Params) -> pd.DataFrame:
    """The jailbreak templates in use: ``id``, ``kind``, ``template`` (each has ``{request}``)."""
    rows = read_project_jsonl("jailbreak", "wrappers.jsonl")
    df = pd.DataFrame(rows)
    bad = [r["id"] for r in rows if "{request}" not in r["template"]]
    if bad:
        raise ParamError(f"wrappers {bad} in data/jailbreak/wrappers.jsonl have no {{request}} slot")
    if P.wrappers is not None:
        unknown = sorted(set(P.wrappers) - set(df.id) - set(df.kind))
        if unknown or not P.wrappers:
            raise ParamError(f"unknown wrappers {unknown}; ids: {', '.join(df.id)}; kinds: "
                             f"{', '.join(dict.fromkeys(df.kind))}")
        df = df[df.id.isin(P.wrappers) | df.kind.isin(P.wrappers)]
    return df.reset_index(drop=True)


@dataclass(frozen=True)
class Prompts:
    attacks: pd.DataFrame  # kind, wrapper, request_id, prompt (kind "plain" = unwrapped)
    benign: pd.DataFrame  # prompt
    direction_harmful: list[str]
    direction_harmless: list[str]


def load_prompts(P: Params) -> Prompts:
    """Evaluated requests (plain and wrapped), benign controls, and the disjoint direction sets
    (harmless side: Self-Instruct seed tasks; disjoint from the benign prompts when those come
    from the same set)."""
    harm = [p.text for p in data.harmful_prompts(P.harmful_sources, P.n_requests + P.n_direction, P.seed)]
    reqs, dir_harm = harm[:P.n_requests], harm[P.n_requests:]
    if P.benign_source == "alpaca_seed":
        safe = [p.text for p in data.harmless_prompts(P.n_benign + P.n_direction, P.seed)]
        benign, dir_safe = safe[:P.n_benign], safe[P.n_benign:]
    else:
        benign = [p.text for p in data.benign_prompts(P.benign_source, P.n_benign, P.seed)]
        dir_safe = [p.text for p in data.harmless_prompts(P.n_direction, P.seed)]
    rows = [{"kind": "plain", "wrapper": "plain", "request_id": i, "prompt": r} for i, r in enumerate(reqs)]
    for w in wrappers(P).itertuples():
        rows += [{"kind": w.kind, "wrapper": w.id, "request_id": i,
                  "prompt": w.template.replace("{request}", r.rstrip(". "))} for i, r in enumerate(reqs)]
    return Prompts(pd.DataFrame(rows), pd.DataFrame({"prompt": benign}), dir_harm, dir_safe)


def refusal_directions(P: Params, lm: LoadedModel, pr: Prompts, progress: bool = True) -> dict[int, torch.Tensor]:
    """Unit mean-difference direction (harmful − harmless, last prompt token) per layer."""
    sites = [Site(P.site, x) for x in P.layers()]  # type: ignore[arg-type]
    ex = [lm.chat.encode(t) for t in pr.direction_harmful + pr.direction_harmless]
    acts = extract(lm, ex, sites, position="last", batch_size=P.batch_size, progress=progress)
    n = len(pr.direction_harmful)
    out = {}
    for s in sites:
        v = acts[s][:n].mean(0) - acts[s][n:].mean(0)
        out[s.layer] = v / v.norm()
    return out


def steers_for(P: Params, condition: str, dirs: dict[int, torch.Tensor], norms: dict[str, float],
               d_model: int) -> list[Steer]:
    """The steers of one condition name (``Params.conditions`` or ``Params.random_conditions``)."""
    if condition == "none":
        return []
    kind, _, rest = condition.partition(" ")
    seed = int(rest.rsplit(" s", 1)[1]) if kind == "random" else None
    ensemble = rest.startswith("ensemble") or kind == "ensemble"
    layers = P.ensemble_layers if ensemble else [int(rest.split()[0].removeprefix("L"))]
    ratio = P.ensemble_ratio if ensemble else P.ratio
    out = []
    for x in layers:
        # each random seed draws one vector per layer (seed·1000 + layer), so an ensemble's
        # random vectors are independent of each other and of the single-layer control's
        v = dirs[x] if seed is None else random_unit(d_model, seed if not ensemble else 1000 * seed + x)
        out.append(at_ratio(Site(P.site, x), v, ratio, norms))  # type: ignore[arg-type]
    return out


def run(P: Params, lm: LoadedModel, pr: Prompts, dirs: dict[int, torch.Tensor],
        progress: bool = True) -> pd.DataFrame:
    """One row per (condition, prompt): the answer and whether it refuses. The conditions of
    ``P.conditions()`` answer every attack and benign prompt; the random controls answer the
    wrapped attacks the unsteered model answered and the benign prompts."""
    sets = pd.concat([pr.attacks.assign(set="attack"),
                      pr.benign.assign(set="benign", kind="benign", wrapper="benign", request_id=-1)],
                     ignore_index=True)[["set", "kind", "wrapper", "request_id", "prompt"]]
    sites = [Site(P.site, x) for x in P.layers()]  # type: ignore[arg-type]
    norms = activation_norms(lm, [lm.chat.encode(t) for t in sets.prompt], sites, batch_size=P.batch_size)

    def answer(frame: pd.DataFrame, names: list[str], desc: str) -> pd.DataFrame:
        conds = [Condition(steers_for(P, c, dirs, norms, lm.d_model), condition=c) for c in names]
        df = generate_answers(lm, frame, conds, text="prompt", max_new_tokens=P.max_new_tokens, positions="all",
                              batch_size=P.batch_size, progress=progress, desc=desc)
        return df.assign(refuses=[is_refusal(t, DEFAULT_PHRASES) for t in df.answer])

    main = answer(sets, P.conditions(), "conditions")
    none = main[main.condition == "none"].reset_index(drop=True)
    keep = (none.set == "benign") | ((none.kind != "plain") & ~none.refuses)
    rand = answer(sets[keep.to_numpy()], P.random_conditions(), "random controls")
    return pd.concat([main, rand], ignore_index=True)


def add_coherence(answers: pd.DataFrame, lm: LoadedModel, floors: textstats.Floors, batch_size: int = 16
                  ) -> pd.DataFrame:
    """``distinct2``, ``log_ppl`` (under ``lm``, after an empty turn: the jailbreak templates are
    long, and most refusals repeat one text) and ``coherent`` (``floors``, calibrated the same
    way: ``judge_power.calibrate_floors(..., context=False)``) beside each answer."""
    out = answers.join(textstats.coherence_measures(lm, answers, context=False, batch_size=batch_size))
    return out.assign(coherent=floors.coherent(out))


def rates(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Refusal rate (%) with Wilson 95% CI per group of ``by`` (for independent prompts)."""
    t = wilson_rates(df, by, "refuses", sort=False)
    ci = [f"[{100 * lo:.0f}, {100 * hi:.0f}]" for lo, hi in zip(t.lo, t.hi, strict=True)]
    return t[[*by, "n"]].assign(refusal_pct=100 * t.rate, ci95=ci)


def table(df: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Refusal % by attack kind (rows: plain, each wrapper kind, all wrapped, benign) × condition
    of ``P.conditions()`` (the random controls answer a subset: see ``blocked``)."""
    df = df[df.condition.isin(P.conditions())]
    att = df[df.set == "attack"]
    parts = [att, att[att.kind != "plain"].assign(kind="all wrapped"), df[df.set == "benign"]]
    t = rates(pd.concat(parts), ["kind", "condition"])
    wide = t.pivot(index="kind", columns="condition", values="refusal_pct")
    order = ["plain"] + [k for k in dict.fromkeys(att.kind) if k != "plain"] + ["all wrapped", "benign"]
    return wide.loc[[k for k in order if k in wide.index], P.conditions()].round(1)


def _answered(df: pd.DataFrame) -> pd.MultiIndex:
    """(wrapper, request_id) of the wrapped attacks the unsteered model answered."""
    att = df[(df.set == "attack") & (df.kind != "plain") & (df.condition == "none")]
    return att[~att.refuses].set_index(["wrapper", "request_id"]).index


def _request_rows(df: pd.DataFrame, conditions: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """The answered jailbreaks under ``conditions`` (pooled): their row positions in ``df``, each
    one's request index (requests in sorted order) and the number of requests."""
    requests = pd.Index(sorted(df[(df.set == "attack")].request_id.unique()))
    under = ((df.set == "attack") & df.condition.isin(conditions)).to_numpy()
    rows = np.flatnonzero(under & pd.MultiIndex.from_frame(df[["wrapper", "request_id"]]).isin(_answered(df)))
    return rows, requests.get_indexer(df.request_id.to_numpy()[rows]), len(requests)


def blocked_coherent(df: pd.DataFrame, conditions: list[str], refits: judge_power.FloorRefits | None = None, *,
                     n_boot: int = 2000, seed: int = 0) -> unc.Bootstrap:
    """The share of the answered jailbreaks under ``conditions`` (pooled) refused by a coherent
    answer, bootstrapping requests; with ``refits`` (``judge_power.FloorRefits`` of the gold rows
    the floors were fitted on) each replicate also refits the coherence floors on its own
    resample of the gold questions, so the interval covers where the floors fall too.

    >>> df = pd.DataFrame({"set": "attack", "kind": "roleplay", "wrapper": "w", "request_id": [0, 1, 0, 1],
    ...                    "condition": ["none", "none", "L5", "L5"], "refuses": [False, False, True, True],
    ...                    "coherent": [True, True, True, False]})
    >>> blocked_coherent(df, ["L5"], n_boot=200).value
    0.5
    """
    rows, req, n_req = _request_rows(df, conditions)
    if not len(rows):
        raise ValueError(f"no answered jailbreak under {conditions}")
    refuses = df.refuses.to_numpy(bool)[rows]
    n = np.bincount(req, minlength=n_req).astype(float)
    fitted = df.coherent.to_numpy(bool)[rows]
    answers = df.iloc[rows]

    def stat(i: dict) -> float:
        flags = fitted if refits is None else refits.coherent(i["gold"], answers)
        if flags is None:  # this gold resample fits no floor
            return np.nan
        k = np.bincount(req, weights=(refuses & flags).astype(float), minlength=n_req)
        d = n[i[None]].sum()
        return float(k[i[None]].sum() / d) if d > 0 else np.nan

    return unc.bootstrap(stat, judge_power.bootstrap_strata(n_req, refits), n_boot=n_boot, seed=seed)


def per_request(df: pd.DataFrame, conditions: list[str], value: str = "refuses") -> tuple[np.ndarray, np.ndarray]:
    """Over the answered jailbreaks, per request (rows, in request order): the count of answers
    under ``conditions`` (pooled, e.g. the seeds of a random control) where ``value`` is true,
    and the count of answers; the two arrays a request-level bootstrap resamples."""
    rows, req, n_req = _request_rows(df, conditions)
    hits = df[value].to_numpy(float)[rows]
    return (np.bincount(req, weights=hits, minlength=n_req).astype(float),
            np.bincount(req, minlength=n_req).astype(float))


def blocked(df: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None = None) -> pd.DataFrame:
    """Per condition (and per random control, its seeds pooled): among the wrapped attacks the
    unsteered model answered, the share refused under it (the seed's "blocked"), with a 95%
    interval bootstrapping requests; the share refused *and* coherent (needs a ``coherent``
    column; ``blocked_coherent``: its interval also covers the floors' error with ``refits``);
    over-refusal on benign prompts (Wilson). ``seeds`` names how many conditions a row
    pools; ``seed_range`` the spread of the single seeds' blocked rates."""
    n_answered = len(_answered(df))
    groups = {c: [c] for c in P.conditions()}
    for steered, rand in P.random_groups().items():
        groups[f"random ({steered})"] = rand
    out = []
    for i, (name, conds) in enumerate(groups.items()):
        k, n = per_request(df, conds)
        b = unc.bootstrap_ratio(k, n, n_boot=P.n_boot, seed=P.seed + i) if n.sum() else None
        row = {"condition": name, "seeds": len(conds), "jailbreaks_answered_unsteered": n_answered,
               "blocked_pct": 100 * b.value if b else np.nan,
               "blocked_ci95": f"[{100 * b.ci[0]:.0f}, {100 * b.ci[1]:.0f}]" if b else "n/a",
               "blocked_lo": 100 * b.ci[0] if b else np.nan, "blocked_hi": 100 * b.ci[1] if b else np.nan}
        if len(conds) > 1:
            single = [per_request(df, [c]) for c in conds]
            vals = [100 * a.sum() / m.sum() for a, m in single if m.sum()]
            row["seed_range"] = f"{min(vals):.0f}–{max(vals):.0f}" if vals else "n/a"
        else:
            row["seed_range"] = ""
        if "coherent" in df.columns:
            bc = blocked_coherent(df, conds, refits, n_boot=P.n_boot, seed=P.seed + i) if n.sum() else None
            row.update({"blocked_coherent_pct": 100 * bc.value if bc else np.nan,
                        "blocked_coherent_ci95": f"[{100 * bc.ci[0]:.0f}, {100 * bc.ci[1]:.0f}]" if bc else "n/a",
                        "blocked_coherent_lo": 100 * bc.ci[0] if bc else np.nan,
                        "blocked_coherent_hi": 100 * bc.ci[1] if bc else np.nan})
        bn = df[(df.set == "benign") & df.condition.isin(conds)].refuses
        lo, hi = wilson(int(bn.sum()), len(bn))
        row.update({"benign_refusal_pct": 100 * bn.mean() if len(bn) else np.nan,
                    "benign_ci95": f"[{100 * lo:.0f}, {100 * hi:.0f}]", "benign_lo": 100 * lo, "benign_hi": 100 * hi})
        if "coherent" in df.columns:
            row["coherent_pct"] = 100 * df[df.condition.isin(conds)].coherent.mean()
        out.append(row)
    return pd.DataFrame(out).set_index("condition")


NUMERIC_CI = ["blocked_lo", "blocked_hi", "blocked_coherent_lo", "blocked_coherent_hi", "benign_lo", "benign_hi"]
"""The interval bounds of ``blocked`` as numbers (%, unrounded); the ``*_ci95`` columns show them."""


def versus_random(df: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per steered condition with a random control: blocked % minus the random control's (seeds
    pooled), paired by request, with a 95% interval bootstrapping requests."""
    out = []
    for i, (steered, rand) in enumerate(P.random_groups().items()):
        k1, n1 = per_request(df, [steered])
        k0, n0 = per_request(df, rand)
        if not n1.sum() or not n0.sum():
            continue

        def diff(idx, k1=k1, n1=n1, k0=k0, n0=n0) -> float:
            j = idx[None]
            a, b = n1[j].sum(), n0[j].sum()
            return float(k1[j].sum() / a - k0[j].sum() / b) if a and b else np.nan

        bs = unc.bootstrap(diff, len(k1), n_boot=P.n_boot, seed=P.seed + 100 + i)
        out.append({"condition": steered, "minus_random_pts": 100 * bs.value,
                    "ci95": f"[{100 * bs.ci[0]:.0f}, {100 * bs.ci[1]:.0f}]",
                    "ci_lo": 100 * bs.ci[0], "ci_hi": 100 * bs.ci[1]})
    return pd.DataFrame(out).set_index("condition").round(1)


def conclusions(tab: pd.DataFrame, blk: pd.DataFrame, vs: pd.DataFrame, P: Params) -> list[str]:
    """Plain-language findings, each number from the tables above."""
    out = []
    if "all wrapped" in tab.index:
        out.append(f"Unsteered: plain requests refused {tab.loc['plain', 'none']:.0f}%, wrapped "
                   f"{tab.loc['all wrapped', 'none']:.0f}% (the jailbreaks' effect).")
    for cond, r in blk.iterrows():
        if cond == "none":
            continue
        coh = (f"; refused and coherent {r.blocked_coherent_pct:.0f}%"
               if "blocked_coherent_pct" in blk.columns and not np.isnan(r.blocked_coherent_pct) else "")
        seeds = f" ({r.seeds} seeds, each {r.seed_range}%)" if r.seeds > 1 else ""
        out.append(f"{cond}{seeds}: blocks {r.blocked_pct:.0f}% {r.blocked_ci95} of the "
                   f"{r.jailbreaks_answered_unsteered} jailbreaks the unsteered model answered{coh}; benign "
                   f"over-refusal {r.benign_refusal_pct:.0f}% {r.benign_ci95} (unsteered "
                   f"{blk.loc['none', 'benign_refusal_pct']:.0f}%).")
    for cond, r in vs.iterrows():
        out.append(f"{cond} minus its random control: {r.minus_random_pts:+.0f} points {r.ci95} (requests resampled).")
    kinds = [k for k in tab.index if k not in ("plain", "all wrapped", "benign")]
    steered = [c for c in P.conditions() if c != "none"]
    if kinds and steered:
        best = max(steered, key=lambda c: blk.loc[c, "blocked_pct"] if not np.isnan(blk.loc[c, "blocked_pct"]) else -1)
        worst = min(kinds, key=lambda k: tab.loc[k, best])
        out.append(f"Under {best}, the most resistant wrapper kind is {worst} ({tab.loc[worst, best]:.0f}% refused). "
                   f"Seed: {SEED['blocked_pct']:.0f}% blocked ({SEED['setting']}); only {SEED['resisted']} resisted.")
    return out


# ---- result record --------------------------------------------------------------------------

def _cond_tag(cond: str) -> str:
    """``single_L12``, ``ensemble``, ``random_single_L12``: a quantity-name-safe condition."""
    return cond.replace("(", "").replace(")", "").replace(" ", "_")


def _ci(lo: float, hi: float) -> tuple[float, float] | None:
    return None if np.isnan(lo) else (float(lo), float(hi))


def record(P: Params, lm: LoadedModel | None, answers: pd.DataFrame, tab: pd.DataFrame, blk: pd.DataFrame,
           vs: pd.DataFrame, floors: textstats.Floors | None = None, val: Validation | None = None):
    """The report's result record: unsteered refusal rates (plain, wrapped, benign); per condition
    (random controls with their seeds pooled) the share of answered jailbreaks blocked, the share
    blocked by a coherent refusal, the benign over-refusal; each steered condition minus its
    random control; the seed's blocking claim and its "only red-team framing resisted".

    Tolerances (every rate is a phrase match on greedy answers, so one answer flipping is the
    noise of a float change; a rate over ``n`` answers gets one of ``n`` items, in %):

    - ``refused.plain`` / ``refused.wrapped`` / ``refused.benign``: unsteered refusal rates.
    - ``answered_unsteered``: the wrapped prompts the unsteered model answered, as a fraction of the
      wrapped prompts (the denominator of "blocked"), one item.
    - ``blocked.<condition>`` (CI: requests bootstrapped) and ``blocked_coherent.<condition>``: rates
      over the answered jailbreaks (× seeds for a random control; left out when none was answered).
    - ``benign_refused.<condition>``: a rate over the benign prompts (× seeds).
    - ``minus_random.<condition>``: a difference of two such rates, one item on each side.
    - ``floors.balanced_accuracy``: the coherence rule on the gold labels, two items.
    - ``classifier.agreement`` / ``.sensitivity`` / ``.specificity`` (rates, one item) and
      ``classifier.kappa`` (a bootstrap SE): the phrase rule on the held-out labelled answers.
    - ``n_requests``, ``n_wrapped``, ``n_benign``: exact.
    """
    from .. import records

    att = answers[(answers.set == "attack") & (answers.condition == "none")]
    wrapped = att[att.kind != "plain"]
    n_plain, n_wrapped = int((att.kind == "plain").sum()), len(wrapped)
    n_benign = int(((answers.set == "benign") & (answers.condition == "none")).sum())
    n_answered = int(blk.loc["none", "jailbreaks_answered_unsteered"])
    qs = [records.exact("n_requests", n_plain), records.exact("n_wrapped", n_wrapped),
          records.exact("n_benign", n_benign),
          records.rate("refused.plain", tab.loc["plain", "none"], n=n_plain, unit="%"),
          records.rate("refused.wrapped", tab.loc["all wrapped", "none"], n=n_wrapped, unit="%"),
          records.rate("refused.benign", tab.loc["benign", "none"], n=n_benign, unit="%"),
          records.rate("answered_unsteered", n_answered / n_wrapped, n=n_wrapped)]
    for cond, r in blk.iterrows():
        if cond == "none":
            continue
        tag, seeds = _cond_tag(str(cond)), int(r.seeds)
        if n_answered:
            qs.append(records.rate(f"blocked.{tag}", r.blocked_pct, n=n_answered * seeds, unit="%",
                                   ci=_ci(r.blocked_lo, r.blocked_hi)))
            if "blocked_coherent_pct" in blk.columns:
                qs.append(records.rate(f"blocked_coherent.{tag}", r.blocked_coherent_pct, n=n_answered * seeds,
                                       unit="%", ci=_ci(r.get("blocked_coherent_lo", np.nan),
                                                        r.get("blocked_coherent_hi", np.nan))))
        qs.append(records.rate(f"benign_refused.{tag}", r.benign_refusal_pct, n=n_benign * seeds, unit="%",
                               ci=_ci(r.benign_lo, r.benign_hi)))
    for cond, r in vs.iterrows():
        qs.append(records.rate(f"minus_random.{_cond_tag(str(cond))}", r.minus_random_pts, n=n_answered, unit="%",
                               items=2, ci=(r.ci_lo, r.ci_hi)))
    if floors is not None:
        qs.append(records.rate("floors.balanced_accuracy", floors.balanced_accuracy, n=floors.n, items=2))
    if val is not None:
        qs += [records.rate("classifier.agreement", val.agreement[0], n=val.n, ci=val.agreement[1]),
               records.rate("classifier.sensitivity", val.sensitivity[0], n=val.refusals, ci=val.sensitivity[1]),
               records.rate("classifier.specificity", val.specificity[0], n=val.n - val.refusals,
                            ci=val.specificity[1]),
               records.rate("classifier.kappa", val.kappa[0], n=val.n, items=2, ci=val.kappa[1])]

    steered = [c for c in P.conditions() if c != "none"]
    claims = []
    if n_answered:
        best = max(steered, key=lambda c: blk.loc[c, "blocked_pct"])
        lo, hi = blk.loc[best, "blocked_lo"] / 100, blk.loc[best, "blocked_hi"] / 100
        beats = (best in vs.index and vs.loc[best, "ci_lo"] > 0)
        rand = (f"{vs.loc[best, 'minus_random_pts']:+.0f} points {vs.loc[best, 'ci95']} over its random control"
                if best in vs.index else "no random control")
        holds = hi >= SEED["blocked_pct"] / 100 and beats
        # power: the seed's 94% against the 0% an unsteered model blocks by construction; this
        # run can tell them apart when its 95% interval (requests resampled) is narrower than that gap
        verdict, why = records.decide(holds=bool(holds), seed_effect=SEED["blocked_pct"] / 100, mde=hi - lo)
        claims.append(records.Claim(
            "blocks_jailbreaks", "adding the refusal direction blocks jailbreaks the unsteered model answers",
            f"{SEED['blocked_pct']:.0f}% blocked ({SEED['setting']})",
            f"{best}: {blk.loc[best, 'blocked_pct']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] of {n_answered} "
            f"({n_plain} requests), {rand}", verdict,
            f"{why} (holds: interval reaches {SEED['blocked_pct']:.0f}% and beats the random control)",
            quantity=f"blocked.{_cond_tag(best)}"))
        kinds = [x for x in tab.index if x not in ("plain", "all wrapped", "benign")]
        if len(kinds) > 1 and any(x == "red_team" for x in kinds):
            others = [tab.loc[x, best] for x in kinds if x != "red_team"]
            holds_rt = tab.loc["red_team", best] < min(others)
            v, w = records.decide(holds=bool(holds_rt))
            claims.append(records.Claim(
                "red_team_resists", "under steering, red-team framing is the wrapper kind that resists",
                f"only {SEED['resisted']} resisted",
                f"{best}: red_team {tab.loc['red_team', best]:.0f}% refused vs others "
                + ", ".join(f"{x} {tab.loc[x, best]:.0f}%" for x in kinds if x != "red_team"), v,
                w + f" ({n_plain} requests per wrapper kind and wrapper)"))
    else:
        claims.append(records.Claim(
            "blocks_jailbreaks", "adding the refusal direction blocks jailbreaks the unsteered model answers",
            f"{SEED['blocked_pct']:.0f}% blocked ({SEED['setting']})", "no jailbreak answered unsteered",
            "not comparable", "the unsteered model refused every wrapped prompt: nothing to block"))
    tables = {"refusal_by_kind": tab, "blocked": blk, "versus_random": vs}
    return records.ResultRecord("jailbreak_blocking", model=lm.spec if lm is not None else "",
                                quantities=tuple(qs), claims=tuple(claims), tables=tables)
