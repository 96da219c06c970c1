"""The steered-evaluation loop: vector → ratio → steer → generate → judge → paired effect.

Every report that steers and reads the answers (metrics vs steering, elicitation, the
base → SFT → DPO transfer, jailbreak blocking) runs this loop through these four calls, so a
fix to one step reaches all of them:

- ``at_ratio``: the ``Steer`` that adds a direction at a perturbation ratio of the site's mean
  activation norm (``steering.activation_norms``);
- ``generate_answers``: one row per (condition, prompt) — the condition's labels, the prompt's
  columns and the stripped ``answer``. Conditions with the same steers (every unsteered
  baseline, say) are generated once and shared, and all conditions are decoded together
  (``steering.generate_steered_grid``). ``rotate`` spreads a cell's alternative draws (random
  directions at several seeds) over the prompts, one draw per prompt;
- ``judge_answers``: the judge's scores as columns, each answer judged for its row's trait
  (``probe_answers``: the same columns read by probes on a model's activations instead);
- ``paired_effects``: per condition, the mean score against the unsteered answer *to the same
  prompt*, with a t-interval over prompts (the independent unit).

And the judge's positive control for a trait: ``instructed_answers`` (the model answers under
system prompts that ask for the trait and for its opposite) and ``polarity_effects`` (does the
judge score the two sets apart, and by how much).

Example (a tiny random model; real reports pass an offline model and a judge):
    >>> import pandas as pd, torch
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> qs = pd.DataFrame({"question": ["Hi", "How are you?"]})
    >>> v = torch.ones(m.d_model)
    >>> conds = [Condition.unsteered(kind="baseline"),
    ...          Condition((at_ratio("resid_pre@1", v, 0.5, {"resid_pre@1": 3.0}),), kind="steered")]
    >>> df = generate_answers(m, qs, conds, max_new_tokens=2)
    >>> list(df.columns), len(df)
    (['kind', 'question', 'answer'], 4)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import judge_power, probe_reader, records, textstats, uncertainty
from .chat import Encoded
from .data import DataError
from .gencache import generate_cached
from .judge import Judge, unopposed
from .models import LoadedModel
from .params import ParamError
from .probe_reader import ProbeReader
from .sites import Site
from .steering import DECODE_ROWS, Positions, Sampling, Steer, generate_steered_grid


@dataclass(frozen=True)
class Condition:
    """One steering condition: the ``Steer``s it applies (none: unsteered), the labels that
    name it in the answers table (``trait``, ``layer``, ``ratio``, …, one column each) and
    ``only``, the positions of the prompts it answers (None: every prompt; ``rotate`` sets it)."""

    steers: tuple[Steer, ...]
    labels: tuple[tuple[str, Any], ...]
    only: tuple[int, ...] | None

    def __init__(self, steers: Iterable[Steer] = (), *, only: Iterable[int] | None = None, **labels: Any) -> None:
        object.__setattr__(self, "steers", tuple(steers))
        object.__setattr__(self, "labels", tuple(labels.items()))
        object.__setattr__(self, "only", None if only is None else tuple(int(i) for i in only))

    @classmethod
    def unsteered(cls, **labels: Any) -> Condition:
        return cls((), **labels)

    def key(self) -> str:
        """What the generation depends on: each steer's site, coefficient and vector bytes."""
        h = hashlib.sha256()
        for s in sorted(self.steers, key=lambda s: s.site.order):
            h.update(f"{s.site}|{s.coef!r}|".encode())
            h.update(s.vector.detach().to("cpu", torch.float64).numpy().tobytes())
        return h.hexdigest()


def rotate(draws: Sequence[Condition], n_prompts: int, offset: int = 0) -> list[Condition]:
    """One cell's alternative draws (random directions at several seeds, say) spread over the
    prompts: prompt i is answered under draw ``(i + offset) mod len(draws)`` only, so the cell
    still sees every draw but costs one answer per prompt instead of one per prompt and draw.
    Each draw comes back with ``only`` set to its prompts; a different ``offset`` per cell pairs
    each prompt with different draws across cells.

    >>> ds = [Condition(seed=s) for s in (1, 2)]
    >>> [(dict(c.labels)["seed"], c.only) for c in rotate(ds, 5, offset=1)]
    [(1, (1, 3)), (2, (0, 2, 4))]
    """
    if any(d.only is not None for d in draws):
        raise ValueError("rotate spreads draws over every prompt; these already answer only some")
    return [Condition(d.steers, only=only, **dict(d.labels))
            for d, only in zip(draws, rotation(n_prompts, len(draws), offset), strict=True)]


RANDOM_DESIGNS = ("rotated", "crossed")
"""How a report's random directions meet its prompts (its ``random_design`` parameter): rotated,
each prompt answers one of them (``rotation``); crossed, each prompt answers every one."""


def check_random_design(value: str) -> None:
    """A ``random_design`` parameter's one-line error.

    >>> check_random_design("paired")
    Traceback (most recent call last):
    traitlab.params.ParamError: random_design must be 'rotated' or 'crossed', got 'paired'
    """
    if value not in RANDOM_DESIGNS:
        raise ParamError(f"random_design must be 'rotated' or 'crossed', got {value!r}")


def rotation(n_prompts: int, n_draws: int, offset: int = 0) -> list[tuple[int, ...]]:
    """``rotate``'s rule: the prompts each of ``n_draws`` draws answers when prompt i goes to draw
    ``(i + offset) mod n_draws``.

    >>> rotation(5, 2)
    [(0, 2, 4), (1, 3)]
    """
    if n_draws < 1:
        raise ValueError("no draws to rotate")
    if n_prompts < n_draws:
        raise ValueError(f"{n_draws} draws need at least as many prompts to each answer one, got {n_prompts}")
    return [tuple(i for i in range(n_prompts) if (i + offset) % n_draws == j) for j in range(n_draws)]


def at_ratio(site: Site | str, vector: torch.Tensor, ratio: float, norms: Mapping[str, float]) -> Steer:
    """Add ``vector``'s direction at ``site`` with norm ``ratio × norms[site]`` (the perturbation
    ratio of ``steering.activation_norms``). A unit vector is used as given; any other is
    normalised first.

    >>> s = at_ratio("resid_pre@1", torch.tensor([3.0, 4.0]), 0.5, {"resid_pre@1": 10.0})
    >>> s.coef, s.vector.tolist()
    (5.0, [0.6000000238418579, 0.800000011920929])
    """
    site = Site.parse(site) if isinstance(site, str) else site
    if str(site) not in norms:
        raise KeyError(f"no activation norm for {site}; measure it with activation_norms(..., [{str(site)!r}])")
    norm = float(vector.norm())
    if not norm > 0:
        raise ValueError(f"{site}: cannot steer with a zero vector")
    unit = vector if abs(norm - 1) < 1e-5 else vector / norm
    return Steer(site, unit, ratio * norms[str(site)])


def generate_answers(model: LoadedModel, prompts: pd.DataFrame, conditions: Sequence[Condition], *,
                     text: str = "question", encode: Callable[[str], Encoded] | None = None,
                     max_new_tokens: int, positions: Positions = "response", batch_size: int = 16,
                     max_rows: int = DECODE_ROWS, sampling: Sampling | None = None, progress: bool = False,
                     desc: str = "steer", cache: bool = True) -> pd.DataFrame:
    """Every condition's answers to its prompts (every prompt, or those of its ``only``): one row
    per (condition, prompt), in condition order then prompt order, with the condition's labels,
    the prompt's columns and ``answer`` (stripped). ``encode`` turns a prompt into model input
    (default: the model's chat format); conditions with the same steers and prompts are generated
    once, those with the same prompts together; ``desc`` names the progress bar.

    Each condition's answers are cached (``$TRAITLAB_CACHE/generations``, written atomically,
    checked when read) under a key of everything they depend on: the generation method, the
    model's weights fingerprint, dtype and device, the prompts' token ids, the condition's steers
    (sites, coefficients, vector bytes), ``max_new_tokens``, ``positions``, ``batch_size`` and a
    seeded ``sampling``; so a re-render, or another report asking for the same answers, reuses
    them, and a changed input can never be served an old answer. ``cache=False`` skips it.
    ``max_rows`` (rows decoded together, ``steering.DECODE_ROWS``) is a speed knob and not part of
    the key: like the CPU the answers were made on, it can move only float rounding.
    """
    if text not in prompts.columns:
        raise KeyError(f"prompts have no {text!r} column (columns: {', '.join(map(str, prompts.columns))})")
    for c in conditions:
        if c.only is not None and (len(set(c.only)) != len(c.only) or not all(0 <= i < len(prompts) for i in c.only)):
            raise ValueError(f"condition {dict(c.labels)} answers prompts {list(c.only)}: each must be one of "
                             f"0..{len(prompts) - 1}, once")
    encode = encode or model.chat.encode
    examples = [encode(t) for t in prompts[text]]
    sampling = Sampling.parse(sampling)
    keys = [c.key() for c in conditions]
    groups: dict[tuple[int, ...] | None, dict[str, Condition]] = {}  # conditions by the prompts they answer
    for c, k in zip(conditions, keys, strict=True):
        groups.setdefault(c.only, {})[k] = c
    done: dict[tuple[tuple[int, ...] | None, str], list[str]] = {}
    for only, unique in groups.items():
        subset = examples if only is None else [examples[i] for i in only]

        def run(conds: list[Condition], subset: list[Encoded] = subset) -> list[list[str]]:
            texts = generate_steered_grid(model, subset, [list(c.steers) for c in conds],
                                          max_new_tokens=max_new_tokens, positions=positions, batch_size=batch_size,
                                          max_rows=max_rows, sampling=sampling, progress=progress, desc=desc)
            return [[t.strip() for t in ts] for ts in texts]

        got = generate_cached(model, subset, unique, run, method=GENERATION_METHOD,
                              store=cache and (sampling.greedy or sampling.seed is not None),  # unseeded: not a result
                              max_new_tokens=max_new_tokens, positions=positions, batch_size=batch_size,
                              sampling=None if sampling.greedy else asdict(sampling))
        done.update({(only, k): texts for k, texts in got.items()})
    rows = []
    records = prompts.to_dict("records")
    for c, k in zip(conditions, keys, strict=True):
        mine = records if c.only is None else [records[i] for i in c.only]
        rows += [{**dict(c.labels), **r, "answer": a} for r, a in zip(mine, done[c.only, k], strict=True)]
    return pd.DataFrame(rows)


def instructed_answers(model: LoadedModel, prompts: pd.DataFrame, system: Mapping[str, Sequence[str]], *,
                       every: bool = False, text: str = "question", max_new_tokens: int, batch_size: int = 16,
                       progress: bool = False, desc: str = "instructed") -> pd.DataFrame:
    """Unsteered answers under system prompts, one set per polarity: ``system`` maps a polarity
    (``"positive"``, ``"negative"``) to paraphrased system prompts. Prompt i is answered under
    paraphrase i mod len (the same index for every polarity, so each prompt's answers are a
    matched pair), or under every paraphrase with ``every``. Rows: the prompt's columns,
    ``polarity``, ``prompt`` (the paraphrase's index) and ``answer``; cached like every generation.

    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> qs = pd.DataFrame({"question": ["Hi", "How are you?", "Why?"]})
    >>> a = instructed_answers(m, qs, {"positive": ["Be glad.", "Be happy."], "negative": ["Be sad."]},
    ...                        max_new_tokens=2)
    >>> a[["polarity", "prompt"]].values.tolist()
    [['positive', 0], ['positive', 1], ['positive', 0], ['negative', 0], ['negative', 0], ['negative', 0]]
    """
    if text not in prompts.columns:
        raise KeyError(f"prompts have no {text!r} column (columns: {', '.join(map(str, prompts.columns))})")
    rows = []
    for pol, paraphrases in system.items():
        if not paraphrases:
            raise ValueError(f"no system prompts for polarity {pol!r}")
        for i, r in enumerate(prompts.to_dict("records")):
            ks = range(len(paraphrases)) if every else [i % len(paraphrases)]
            rows += [{**r, "polarity": pol, "prompt": k} for k in ks]
    df = pd.DataFrame(rows)
    examples = [model.chat.encode(r[text], system=system[r["polarity"]][r["prompt"]]) for r in rows]
    out = generate_answers(model, df.assign(_row=range(len(df))), [Condition.unsteered()], text="_row",
                           encode=lambda i: examples[int(i)], max_new_tokens=max_new_tokens,
                           batch_size=batch_size, progress=progress, desc=desc)
    return out.drop(columns="_row")


def polarity_effects(judged: pd.DataFrame, *, by: Sequence[str] = ("trait",), value: str = "score",
                     unit: str = "question") -> pd.DataFrame:
    """Per group of ``by``: the mean ``value`` of the answers under the positive and the negative
    system prompts (``instructed_answers``), their difference paired by ``unit`` with a 95%
    t-interval and its minimum detectable effect (80% power); ``differ`` when the interval lies
    above 0: the instructions change the answers *and* the reader (a judge) sees it, the judge's
    positive control for the trait.

    With an ``answer`` column, also how much the instructions changed the text, which tells a
    reader that cannot see a change from a model that made none (``instruction_change``):
    ``pairs``, ``same`` the share of matched answer pairs with the same words, ``similarity``
    their mean word similarity (``textstats.similarity``; 1 = unchanged) and its SE.

    >>> df = pd.DataFrame({"trait": "t", "question": ["a", "a", "b", "b"],
    ...                    "polarity": ["negative", "positive"] * 2, "score": [40.0, 70.0, 50.0, 70.0]})
    >>> polarity_effects(df).loc["t", ["positive", "negative", "delta"]].tolist()
    [70.0, 45.0, 25.0]
    """
    by = list(by)
    e = paired_effects(judged, by=[*by, "polarity"], baseline=judged.polarity == "negative", within=by,
                       unit=unit, value=value)
    e = e.xs("positive", level="polarity")
    out = pd.DataFrame({"positive": e.steered, "negative": e.baseline, "delta": e.delta, "se": e.se,
                        "ci_lo": e.ci_lo, "ci_hi": e.ci_hi,
                        "mde": [uncertainty.mde(se, n) for se, n in zip(e.se, e.n, strict=True)],
                        "n": e.n, "differ": (e.n > 1) & (e.ci_lo > 0)}, index=e.index)
    if "answer" in judged.columns:
        out = out.join(instruction_change(judged, by=by, unit=unit))
    return out


def instruction_change(answers: pd.DataFrame, *, by: Sequence[str] = ("trait",), unit: str = "question") -> pd.DataFrame:
    """Per group of ``by``: how much the positive and the negative system prompts changed the
    answers. Each positive answer is paired with the negative answer to the same ``unit`` (and the
    same paraphrase index ``prompt`` where there is one: ``instructed_answers`` gives both
    polarities the same index). ``pairs``, ``same`` (the share of pairs with the same words),
    ``similarity`` (their mean ``textstats.similarity``) and ``similarity_se``. A failed positive
    control whose pairs are mostly alike says the model ignored the instructions, not that the
    reader is blind.

    >>> df = pd.DataFrame({"trait": "t", "question": ["a", "a", "b", "b"],
    ...                    "polarity": ["negative", "positive"] * 2,
    ...                    "answer": ["It is fine.", "it is fine", "No.", "Yes, gladly!"]})
    >>> instruction_change(df).loc["t", ["pairs", "same", "similarity"]].tolist()
    [2.0, 0.5, 0.5]
    """
    keys = [*by, unit, *(["prompt"] if "prompt" in answers.columns else [])]
    pos = answers[answers.polarity == "positive"][[*keys, "answer"]]
    neg = answers[answers.polarity == "negative"][[*keys, "answer"]]
    m = pos.merge(neg, on=keys, suffixes=("_pos", "_neg"))
    m["similarity"] = [textstats.similarity(a, b) for a, b in zip(m.answer_pos, m.answer_neg, strict=True)]
    m["same"] = m.similarity == 1.0
    g = m.groupby(list(by))
    return pd.DataFrame({"pairs": g.size(), "same": g.same.mean(), "similarity": g.similarity.mean(),
                         "similarity_se": g.similarity.sem()})


ALIKE = 0.8
"""Mean word similarity (``instruction_change``) at or above which the positive- and the
negative-instructed answers count as alike: at 0.8 a 40-token answer keeps about 32 of its words
in order, the rest a rewording ("I do not" / "I don't"), so the instructions changed little and a
failed control says the model barely follows them, not that the reader is blind."""


def _has_change(row: Any) -> bool:
    """Whether a row carries ``instruction_change``'s columns over at least one pair."""
    return all(k in row.index for k in ("pairs", "same", "similarity")) and row.pairs > 0


def change_text(row: Any) -> str:
    """One phrase for a row of ``instruction_change`` (or ``polarity_effects``): how much the
    instructions changed the answers; empty when the row has no such columns.

    >>> change_text(pd.Series({"pairs": 16, "same": 0.25, "similarity": 0.71}))
    'the instructions left 4/16 answer pairs word for word the same (mean word similarity 0.71)'
    """
    if not _has_change(row):
        return ""
    return (f"the instructions left {round(row.same * row.pairs)}/{int(row.pairs)} answer pairs word for word "
            f"the same (mean word similarity {row.similarity:.2f})")


def change_quantities(name: str, row: Any) -> list[records.Quantity]:
    """Record quantities for a row of ``instruction_change``: ``<name>.same`` (a rate over the
    pairs) and ``<name>.similarity`` (a mean, 3 SEs); none when the row has no pairs."""
    if not _has_change(row):
        return []
    n = int(row.pairs)
    se = float(row.similarity_se) if np.isfinite(row.similarity_se) else 0.0
    return [records.rate(f"{name}.same", float(row.same), n=n, items=2),
            records.estimate(f"{name}.similarity", float(row.similarity), se=max(se, 1e-3), n=n, k=3)]


GENERATION_METHOD = "grid-v1"
"""Version of the generation code; part of every cached generation's key."""


JUDGE_READINGS = ("absolute", "yesno", "opposite", "probe")
"""How ``judge_answers`` reads a 0–100 score: the judge's logprob score (``Judge.score_many``),
its yes/no question (``Judge.yesno_many``), for the trait 100 − its score of the trait's
opposite (``Judge.opposite_many``; coherence, which has none, is then read by its score), or
``probe``: the judge is asked nothing, and probes fitted on the gold sets' tune part read the
local judge model's activations (``judge_probes``; a trait needs a gold set). The
judge-calibration report says which sees more."""


def check_reading(reading: str, judge_backend: str, traits: Sequence[str] = (), *, key: str = "reading",
                  gold_dir: str | None = None, trait_opposites: Mapping[str, Sequence[str]] | None = None) -> None:
    """A report's trait ``reading`` (``JUDGE_READINGS``), checked before model work: a one-line
    ``ParamError`` for an unknown reading, for ``opposite`` with any of ``traits`` lacking an
    opposite (in ``trait_opposites`` or ``judge.TRAIT_OPPOSITES``), for ``probe`` with an HTTP
    judge (it shows no activations), and for ``probe`` with any of ``traits`` lacking a gold set
    to fit on (in ``gold_dir`` or ours: ``judge_power.gold_path``). ``key`` names the parameter
    in the messages.

    >>> check_reading("opposite", "local", ["cheer"])
    Traceback (most recent call last):
    ...
    traitlab.params.ParamError: reading 'opposite': trait 'cheer' has no opposite to be read through; known: refusal. Set trait_opposites: {cheer: [<opposite>, <one-line definition>]} in the parameters, or choose another reading
    """
    if reading not in JUDGE_READINGS:
        raise ParamError(f"{key} must be one of {', '.join(JUDGE_READINGS)}, got {reading!r}")
    if reading == "opposite" and (why := unopposed(traits, trait_opposites)) is not None:
        raise ParamError(f"{key} 'opposite': {why}")
    if reading != "probe":
        return
    if judge_backend != "local":
        raise ParamError(f"{key} 'probe' reads the judge model's activations: set judge_backend: local "
                         f"(an HTTP judge shows none) or choose another {key}")
    if (why := judge_power.missing_gold(traits, gold_dir)) is not None:
        raise ParamError(f"{key} 'probe' fits a probe on each trait's gold answers; {why}, or set {key}: absolute")
    try:
        probe_reader.check_gold_fit(traits, folder=gold_dir, coherence=False)  # the trait's probe
    except ValueError as err:
        raise ParamError(f"{key} 'probe': {err}") from None


def judge_answers(judge: Judge, answers: pd.DataFrame, metrics: Mapping[str, str] | Sequence[str] = ("trait",),
                  *, trait: str | None = None, reading: str = "absolute", progress: bool = False) -> pd.DataFrame:
    """``answers`` with one score column per judge metric (NaN where the judge gave none).

    ``metrics`` names the judge metrics (``"trait"``, ``"coherence"``), each written to a column
    of its name, or maps metric → column. Each answer is judged for ``trait``, or, when that is
    None, for its own row's ``trait`` column, by ``reading`` (``JUDGE_READINGS``). Rows keep
    their order.
    """
    if reading not in JUDGE_READINGS:
        raise ValueError(f"reading must be one of {', '.join(JUDGE_READINGS)}, got {reading!r}")
    if reading == "probe":
        probes = judge_probes(judge, _traits(answers, trait), coherence="coherence" in _columns(metrics),
                              progress=progress)
        return probe_answers(probes, judge.backend.model, answers, metrics, trait=trait, progress=progress)

    def read(metric: str, t: str, g: pd.DataFrame) -> list[float]:
        items = list(zip(g.question, g.answer, strict=True))
        if reading == "opposite" and metric == "trait":
            s = judge.opposite_many(items, trait=t, progress=progress)
        else:
            s = (judge.yesno_many if reading == "yesno" else judge.score_many)(metric, items, trait=t, progress=progress)
        return [math.nan if x.value is None else x.value for x in s]

    return _metric_columns(answers, metrics, trait, read)


def judge_probes(judge: Judge, traits: Sequence[str], *, coherence: bool = True,
                 progress: bool = False) -> dict[str, ProbeReader]:
    """The probes ``judge_answers(..., reading="probe")`` reads with: one per trait in ``traits``
    and, with ``coherence``, one for coherence (on those traits' gold coherence labels), fitted
    through the local judge's own model on the gold sets' tune part (``probe_reader.fit_gold``).
    The activation cache makes a refit cheap.

    Raises ``ValueError`` for an HTTP judge (it shows no activations) and ``DataError`` naming the
    missing ``gold_<trait>.jsonl`` for a trait without a gold set (the judge config's ``gold_dir``
    is read before ours: ``judge_power.gold_path``).
    """
    if judge.config.backend != "local":
        raise ValueError(f"reading='probe' reads the judge model's activations; the {judge.config.backend!r} "
                         f"judge {judge.config.model!r} shows none: use a local judge (judge_backend: local)")
    if (why := judge_power.missing_gold(traits, judge.config.gold_dir)) is not None:
        raise DataError(f"reading='probe' fits its probe on gold answers: {why}, or read it with the judge")
    return probe_reader.fit_gold(judge.backend.model, list(traits), coherence=coherence,
                                 folder=judge.config.gold_dir, progress=progress)


def probe_answers(probes: Mapping[str, ProbeReader], reader: LoadedModel, answers: pd.DataFrame,
                  metrics: Mapping[str, str] | Sequence[str] = ("trait",), *, trait: str | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """``answers`` with one column per metric read by a probe instead of the judge
    (``probe_reader.fit_gold``): ``"trait"`` by the probe of ``trait`` (or of each row's ``trait``
    column), ``"coherence"`` by ``probes["coherence"]``; NaN for an empty answer. The same shape as
    ``judge_answers``, so ``paired_effects`` reads either. One pass of ``reader`` over the answers
    serves every probe (``probe_reader.read_many``).

    Raises ``KeyError`` naming the missing probe (fit one on a gold set of that trait).
    """
    traits = _traits(answers, trait)
    names = list(dict.fromkeys(n for m in _columns(metrics) for n in (traits if m == "trait" else [m])))
    for name in names:
        if name not in probes:
            raise KeyError(f"no probe for {name!r} (have: {', '.join(probes) or 'none'}); "
                           f"fit one with probe_reader.fit_gold on a gold set of {name!r}")
    got = probe_reader.read_many({n: probes[n] for n in names}, reader,
                                 list(zip(answers.question, answers.answer, strict=True)), progress=progress)
    row = pd.Series(np.arange(len(answers)), index=answers.index)
    return _metric_columns(answers, metrics, trait,
                           lambda metric, t, g: got[t if metric == "trait" else metric][row[g.index].to_numpy()])


def _columns(metrics: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """metric → output column (a list of metrics writes each to a column of its name)."""
    return dict(metrics) if isinstance(metrics, Mapping) else {m: m for m in metrics}


def _check_trait_column(answers: pd.DataFrame, trait: str | None) -> None:
    if trait is None and "trait" not in answers.columns:
        raise KeyError("answers have no 'trait' column: pass trait=")


def _traits(answers: pd.DataFrame, trait: str | None) -> list[str]:
    """The traits the answers are read for: ``trait``, or each row's own, in order of appearance."""
    _check_trait_column(answers, trait)
    return [trait] if trait is not None else list(dict.fromkeys(answers.trait))


def _metric_columns(answers: pd.DataFrame, metrics: Mapping[str, str] | Sequence[str], trait: str | None,
                    read: Callable[[str, str, pd.DataFrame], Any]) -> pd.DataFrame:
    """``answers`` with one column per metric: ``read(metric, trait, rows)`` for ``trait``'s rows,
    or for each row's own ``trait`` group when ``trait`` is None; rows keep their order."""
    _check_trait_column(answers, trait)
    out = answers.copy()
    groups = [(trait, answers)] if trait is not None else list(answers.groupby("trait", sort=False))
    for metric, col in _columns(metrics).items():
        vals = pd.Series(np.nan, index=answers.index, dtype=float)
        for t, g in groups:
            vals.loc[g.index] = read(metric, t, g)
        out[col] = vals
    return out


def _with_baseline(judged: pd.DataFrame, baseline: pd.Series, keys: list[str], value: str) -> pd.DataFrame:
    """The steered rows, each with its baseline row's ``value`` (same ``keys``) as ``_base``."""
    base = judged[baseline][keys + [value]].rename(columns={value: "_base"})
    if base.duplicated(keys).any():
        raise ValueError(f"baseline has several rows per {keys}: say which labels separate them (within=)")
    return judged[~baseline].merge(base, on=keys, how="left")


def paired_effects(judged: pd.DataFrame, *, by: Sequence[str], baseline: pd.Series,
                   unit: str = "question", within: Sequence[str] = (), value: str = "score",
                   level: float = 0.95) -> pd.DataFrame:
    """Per group of ``by`` (the steered rows): mean ``value``, the unsteered mean over the same
    units, and the paired difference with its SE and t-interval over units.

    ``baseline`` marks the unsteered rows; each steered row is paired with the baseline row of the
    same ``unit`` (the prompt) and the same ``within`` labels (e.g. the trait). Units where either
    score is missing are left out of that group's difference.

    >>> df = pd.DataFrame({"kind": ["none", "none", "up", "up"], "question": ["a", "b", "a", "b"],
    ...                    "score": [50.0, 60.0, 70.0, 90.0]})
    >>> e = paired_effects(df, by=["kind"], baseline=df.kind == "none")
    >>> e.loc["up", ["steered", "baseline", "delta"]].tolist(), int(e.loc["up", "n"])
    ([80.0, 55.0, 25.0], 2)
    """
    m = _with_baseline(judged, baseline, [*within, unit], value)
    out = []
    for key, g in m.groupby(list(by), sort=False):
        d = (g[value] - g._base).to_numpy(float)
        ok = np.isfinite(d)
        mean, se, n = uncertainty.mean_se(d[ok])
        lo, hi = uncertainty.t_interval(mean, se, n, level)
        out.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                    "steered": float(g[value][ok].mean()) if ok.any() else math.nan,
                    "baseline": float(g._base[ok].mean()) if ok.any() else math.nan,
                    "delta": mean, "se": se, "ci_lo": lo, "ci_hi": hi, "n": n})
    cols = ["steered", "baseline", "delta", "se", "ci_lo", "ci_hi", "n"]
    return pd.DataFrame(out, columns=[*by, *cols]).astype({"n": int}).set_index(list(by))


def unit_matrix(judged: pd.DataFrame, *, by: Sequence[str], baseline: pd.Series, unit: str = "question",
                within: Sequence[str] = (), value: str = "score") -> tuple[pd.DataFrame, dict]:
    """Per-unit paired differences for a bootstrap over units: a frame with one row per steered
    condition (index ``by``) and one column per unit (NaN where missing), and the column positions
    of each ``within`` stratum (``{stratum: array of column indices}``; one stratum ``None``
    without ``within``). Resample columns within strata (``uncertainty.bootstrap``) and
    recompute any statistic of the per-condition means.

    >>> df = pd.DataFrame({"kind": ["none", "none", "up", "up"], "question": ["a", "b", "a", "b"],
    ...                    "score": [50.0, 60.0, 70.0, 90.0]})
    >>> d, strata = unit_matrix(df, by=["kind"], baseline=df.kind == "none")
    >>> d.loc["up"].tolist(), strata[None].tolist()
    ([20.0, 30.0], [0, 1])
    """
    keys = [*within, unit]
    m = _with_baseline(judged, baseline, keys, value)
    m["_d"] = m[value] - m._base
    m["_unit"] = list(zip(*(m[k] for k in keys), strict=True)) if within else m[unit]
    wide = m.pivot_table(index=list(by), columns="_unit", values="_d", aggfunc="mean", dropna=False, sort=False)
    cols = list(wide.columns)
    if within:
        strata: dict[Any, list[int]] = {}
        for i, c in enumerate(cols):
            strata.setdefault(c[:-1] if len(within) > 1 else c[0], []).append(i)
        return wide, {k: np.array(v) for k, v in strata.items()}
    return wide, {None: np.arange(len(cols))}
