"""Where a trait set's examples come from: written, the question alone, or the model's own answers.

A detection report reads activations of contrastive examples. Three sources, chosen by the
``source`` parameter of the reports that extract (``SourceParams``):

- ``written``: the prompt and the response we wrote (``data/traits/<trait>.jsonl``) — easy
  contrasts, so every method (random included) can look alike;
- ``question``: the prompt alone, read at its last token (``position`` must be ``last``) — the
  seed's "speculative vs factual question" condition, where the trait is carried by the question
  and the model has not answered yet. Needs sets whose two prompts differ;
- ``generated``: **natural elicitation**, as the seed did it. The model under study answers each
  prompt (greedy, ``elicit_max_new_tokens``); the answer replaces the written response; a check
  keeps a pair only when the answers show the intended polarity:

  - ``rule`` (refusal): the validated phrase rule (``traitlab.refusal.is_refusal``) — the
    positive prompt's answer refuses and the negative prompt's answer does not;
  - ``judge`` (any trait with a judge description): the judge's trait score of the positive
    answer is at least ``elicit_margin`` points above its paired negative answer's (a relative
    test, so a judge with a compressed scale still ranks);
  - ``none``: keep every pair; ``auto``: ``rule`` for refusal, ``judge`` otherwise.

  Needs sets whose two prompts differ (the scenario sets, e.g. ``optimism_scenarios``): with one
  prompt for both sides the model would answer both alike. Answers and judge replies are cached
  under keys of everything they depend on (``traitlab.gencache``, the judge's replay cache), so a
  re-render rebuilds the same set without model work.

Example (a tiny random model; nothing it says is a refusal, so ``rule`` would keep no harmful
pair — ``none`` keeps all):
    >>> from traitlab.models import load_model
    >>> from traitlab.data import load_trait
    >>> m = load_model("tiny-llama")
    >>> ds = load_trait("refusal", max_pairs_per_split=2)
    >>> e = generate(m, ds, ElicitConfig(max_new_tokens=2, check="none"), progress=False, cache=False)
    >>> len(e.dataset.pairs), list(e.table.columns[:4])
    (4, ['id', 'split', 'pos_answer', 'neg_answer'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from . import records
from .data import DataError, TraitDataset, load_trait
from .judge import Judge, judge_from_params, undescribed
from .models import LoadedModel
from .params import ParamError, traits_folder
from .refusal import is_refusal
from .steered_eval import Condition, generate_answers

Source = Literal["written", "question", "generated"]
SOURCES: tuple[str, ...] = ("written", "question", "generated")
Check = Literal["auto", "rule", "judge", "none"]
CHECKS: tuple[str, ...] = ("auto", "rule", "judge", "none")


@dataclass(frozen=True)
class SourceParams:
    """The parameters every extracting report shares for where its examples come from (a mixin
    of those reports' ``Params``; see the module docstring). The judge fields matter only for
    ``source: generated`` with a ``judge`` check."""

    source: Literal["written", "question", "generated"] = "written"
    elicit_max_new_tokens: int = 48
    elicit_check: Literal["auto", "rule", "judge", "none"] = "auto"
    elicit_margin: float = 10.0
    judge_backend: Literal["local", "openai"] = "local"
    judge_model: str = "qwen2.5-coder-1.5b-instruct"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_offline: bool = False
    judge_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    min_mass: float = 0.25
    trait_descriptions: dict[str, str] = field(default_factory=dict)
    """One-line judge definitions of traits ``traitlab.judge.TRAIT_DESCRIPTIONS`` lacks, for a
    ``judge`` check of their generated sets, e.g. ``{candour: "saying plainly what one thinks."}``."""

    def check_source(self, position: str) -> None:
        """Parameter checks that need no model: one ``ParamError`` line naming the key and fix."""
        if self.source not in SOURCES:
            raise ParamError(f"source {self.source!r} unknown; choose one of {', '.join(SOURCES)}")
        if self.source == "question" and position != "last":
            raise ParamError(f"source 'question' reads the prompt's last token: set position: last "
                             f"(got {position!r})")
        if self.elicit_check not in CHECKS:
            raise ParamError(f"elicit_check {self.elicit_check!r} unknown; choose one of {', '.join(CHECKS)}")
        if self.elicit_max_new_tokens < 1:
            raise ParamError(f"elicit_max_new_tokens must be >= 1, got {self.elicit_max_new_tokens}")

    def elicit_config(self) -> ElicitConfig:
        return ElicitConfig(max_new_tokens=self.elicit_max_new_tokens, check=self.elicit_check,
                            margin=self.elicit_margin)


@dataclass(frozen=True)
class ElicitConfig:
    """How a generated set is built: answer length, the check and its margin (judge points)."""

    max_new_tokens: int = 48
    check: Check = "auto"
    margin: float = 10.0
    batch_size: int = 16


def judged_trait(spec: str) -> str:
    """The trait the judge scores for a trait set: the set's name up to the first ``_`` or ``:``
    (``optimism_scenarios`` → ``optimism``, ``uncertainty_zh`` → ``uncertainty``).

    >>> judged_trait("optimism_scenarios"), judged_trait("optimism:tech,career")
    ('optimism', 'optimism')
    """
    return spec.split(":")[0].split("_")[0]


def check_for(spec: str, check: Check, descriptions: Mapping[str, str] | None = None) -> Check:
    """The check a set gets: ``auto`` → ``rule`` for refusal sets, ``judge`` otherwise; a ``rule``
    for a non-refusal set or a ``judge`` for a trait without a description (in
    ``TRAIT_DESCRIPTIONS`` or ``descriptions``, a report's ``trait_descriptions``) is a ``ParamError``."""
    trait = judged_trait(spec)
    if check == "auto":
        check = "rule" if trait == "refusal" else "judge"
    if check == "rule" and trait != "refusal":
        raise ParamError(f"elicit_check 'rule' exists only for refusal sets, not {spec!r}; use judge or none")
    if check == "judge" and (why := undescribed([trait], descriptions)) is not None:
        raise ParamError(f"elicit_check 'judge' (set {spec!r}): {why}; or use elicit_check: none")
    return check


def contrasting(ds: TraitDataset, source: str) -> None:
    """``question`` and ``generated`` need two different prompts in every pair: a clear
    ``DataError`` naming the set and the fix otherwise."""
    same = [p.id for p in ds.pairs if p.pos_prompt.strip() == p.neg_prompt.strip()]
    if same:
        raise DataError(f"trait set {ds.trait!r}: {len(same)} of {len(ds.pairs)} pairs use one prompt for both "
                        f"sides (e.g. {same[0]!r}), so source {source!r} has nothing to contrast; use a set "
                        "whose prompts invite and avoid the trait (e.g. optimism_scenarios) or source: written")


@dataclass(frozen=True)
class Elicited:
    """A generated set: the kept pairs with the model's answers as responses, and one table row
    per scenario pair (``id``, ``split``, both answers, ``pos_ok``/``neg_ok``, judge scores where
    judged, ``kept``)."""

    dataset: TraitDataset
    table: pd.DataFrame
    check: str

    def summary(self) -> dict[str, float | int | str]:
        """Keep rates: per side for the rule (positive answers that refuse, negative ones that do
        not); for the judge its mean score per side (the check itself is one test per pair)."""
        t = self.table
        judged = "pos_score" in t.columns
        nan = float("nan")
        return {"set": self.dataset.trait, "check": self.check, "scenarios": len(t),
                "pos_ok_pct": nan if judged else 100 * float(t.pos_ok.mean()),
                "neg_ok_pct": nan if judged else 100 * float(t.neg_ok.mean()),
                "pos_mean_score": float(t.pos_score.mean()) if judged else nan,
                "neg_mean_score": float(t.neg_score.mean()) if judged else nan,
                "kept": int(t.kept.sum()), "kept_pct": 100 * float(t.kept.mean()),
                "kept_train": int((t.kept & (t.split == "train")).sum()),
                "kept_val": int((t.kept & (t.split == "val")).sum())}


def generate(model: LoadedModel, ds: TraitDataset, config: ElicitConfig, *, judge: Judge | None = None,
             progress: bool = True, cache: bool = True) -> Elicited:
    """The model's own answers to both prompts of every pair, checked (module docstring).

    Raises ``DataError`` when fewer than 2 train or 2 val pairs survive the check, naming the
    keep rates so a reader sees which side failed."""
    contrasting(ds, "generated")
    check = check_for(ds.trait, config.check, dict(judge.config.descriptions) if judge is not None else None)
    if check == "judge" and judge is None:
        raise ValueError(f"{ds.trait!r}: the judge check needs a judge (or elicit_check: none)")
    rows = pd.DataFrame([{"id": p.id, "split": p.split, "pos_prompt": p.pos_prompt, "neg_prompt": p.neg_prompt}
                         for p in ds.pairs])
    prompts = pd.DataFrame({"question": list(rows.pos_prompt) + list(rows.neg_prompt)})
    answers = generate_answers(model, prompts, [Condition.unsteered()], max_new_tokens=config.max_new_tokens,
                               batch_size=config.batch_size, progress=progress, desc=f"elicit {ds.trait}",
                               cache=cache).answer.tolist()
    n = len(rows)
    rows["pos_answer"], rows["neg_answer"] = answers[:n], answers[n:]
    rows = rows[["id", "split", "pos_answer", "neg_answer", "pos_prompt", "neg_prompt"]]
    nonempty = rows.pos_answer.str.strip().ne("") & rows.neg_answer.str.strip().ne("")
    if check == "rule":
        rows["pos_ok"] = rows.pos_answer.map(is_refusal)
        rows["neg_ok"] = ~rows.neg_answer.map(is_refusal)
        rows["kept"] = rows.pos_ok & rows.neg_ok & nonempty
    elif check == "judge":
        assert judge is not None
        trait = judged_trait(ds.trait)
        items = list(zip(rows.pos_prompt, rows.pos_answer, strict=True)) + list(
            zip(rows.neg_prompt, rows.neg_answer, strict=True))
        scores = [s.value for s in judge.score_many("trait", items, trait=trait, progress=progress)]
        rows["pos_score"], rows["neg_score"] = scores[:n], scores[n:]
        diff = rows.pos_score.astype(float) - rows.neg_score.astype(float)
        rows["pos_ok"] = rows["neg_ok"] = (diff >= config.margin).fillna(False)  # one test per pair
        rows["kept"] = rows.pos_ok & nonempty
    else:
        rows["pos_ok"] = nonempty
        rows["neg_ok"] = nonempty
        rows["kept"] = nonempty
    by_id = {p.id: p for p in ds.pairs}
    kept = tuple(replace(by_id[r.id], pos_response=r.pos_answer, neg_response=r.neg_answer)
                 for r in rows[rows.kept].itertuples())
    out = Elicited(TraitDataset(ds.trait, kept), rows.reset_index(drop=True), check)
    s = out.summary()
    if s["kept_train"] < 2 or s["kept_val"] < 2:
        why = (f"mean judge score {s['pos_mean_score']:.1f} positive vs {s['neg_mean_score']:.1f} negative, "
               f"margin {config.margin:g}" if check == "judge" else
               f"positive side {s['pos_ok_pct']:.0f}% ok, negative {s['neg_ok_pct']:.0f}%")
        raise DataError(f"natural elicitation of {ds.trait!r} kept {s['kept_train']} train and {s['kept_val']} val "
                        f"pairs of {n} ({check} check: {why}); at least 2 of each are needed: use more "
                        "scenarios, another check or source: written")
    return out


def question_only(ds: TraitDataset) -> TraitDataset:
    """``ds`` with empty responses: encoded, each example is the formatted prompt alone (read at
    its last token), and the surface baseline sees the prompts only.

    >>> from traitlab.data import load_trait
    >>> q = question_only(load_trait("uncertainty", max_pairs_per_split=2))
    >>> {p.pos_response for p in q.pairs}
    {''}
    """
    contrasting(ds, "question")
    return TraitDataset(ds.trait, tuple(replace(p, pos_response="", neg_response="") for p in ds.pairs))


def written_sets(p: Any) -> dict[str, TraitDataset]:
    """The trait sets as written (``data/traits`` or ``traits_dir``), by trait, for a report's
    Params with ``traits``, ``max_pairs_per_split`` and ``traits_dir``."""
    return {t: load_trait(t, max_pairs_per_split=p.max_pairs_per_split, folder=traits_folder(p.traits_dir))
            for t in p.traits}


def check_sets(p: Any) -> None:
    """Every set of ``p.traits`` can be read the way ``p.source`` asks (two different prompts per
    pair; a check that exists for the trait): one clear error before any model work."""
    for ds in written_sets(p).values():
        if p.source != "written":
            contrasting(ds, p.source)
        if p.source == "generated":
            check_for(ds.trait, p.elicit_check, p.trait_descriptions)


def trait_sets(p: Any, model: LoadedModel, *, sets: dict[str, TraitDataset] | None = None,
               judge_factory: Callable[[], Judge] | None = None, progress: bool = True
               ) -> tuple[dict[str, TraitDataset], dict[str, Elicited]]:
    """The sets a report extracts from, by ``p.source`` (a ``SourceParams``): the written sets
    (``sets``, default ``written_sets(p)``) as given, the questions alone, or for ``generated``
    the kept pairs of each with its ``Elicited`` table. The judge is built once, only when a set
    needs it."""
    sets = written_sets(p) if sets is None else sets
    if p.source == "question":
        return {name: question_only(ds) for name, ds in sets.items()}, {}
    if p.source != "generated":
        return dict(sets), {}
    cfg = p.elicit_config()
    judge: Judge | None = None
    out, tables = {}, {}
    for name, ds in sets.items():
        if check_for(ds.trait, cfg.check, p.trait_descriptions) == "judge" and judge is None:
            judge = judge_factory() if judge_factory else judge_from_params(p)
        e = generate(model, ds, cfg, judge=judge, progress=progress)
        out[name], tables[name] = e.dataset, e
    return out, tables


def quantities(elicited: dict[str, Elicited]) -> list[records.Quantity]:
    """Record quantities of generated sets: ``elicit.<set>.kept_rate``, the share of scenario
    pairs the check kept [rate over pairs, 2 pairs flipping: greedy answers can part at a near-tie
    between CPUs, and a judge score can cross the margin]."""
    return [records.rate(f"elicit.{name}.kept_rate", float(e.table.kept.mean()), n=len(e.table), items=2)
            for name, e in elicited.items()]


def summary_table(elicited: dict[str, Elicited]) -> pd.DataFrame:
    """One row per generated set: the check, keep rates per side and pairs kept per split."""
    return pd.DataFrame([e.summary() for e in elicited.values()])


def examples(elicited: dict[str, Elicited], n: int = 2, width: int = 140) -> pd.DataFrame:
    """A few kept and dropped pairs per set (answers cut to ``width`` characters), for a reader
    to see what the check kept."""
    rows = []
    for name, e in elicited.items():
        for kept in (True, False):
            for r in e.table[e.table.kept == kept].head(n).itertuples():
                rows.append({"set": name, "kept": kept, "pos_answer": r.pos_answer[:width],
                             "neg_answer": r.neg_answer[:width],
                             **({"pos_score": r.pos_score, "neg_score": r.neg_score}
                                if "pos_score" in e.table.columns else {})})
    return pd.DataFrame(rows)


__all__: Sequence[str] = ("SOURCES", "CHECKS", "SourceParams", "ElicitConfig", "Elicited", "judged_trait",
                          "check_for", "contrasting", "generate", "question_only", "written_sets",
                          "check_sets", "trait_sets", "quantities", "summary_table", "examples")
