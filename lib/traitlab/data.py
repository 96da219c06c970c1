"""Prompt sets: the contrastive trait pairs we write, and public datasets in the data root.

A trait file ``data/traits/<trait>.jsonl`` holds one pair per line::

    {"id": "optimism-001", "group": "tech", "split": "train",
     "pos_prompt": "...", "pos_response": "...", "neg_prompt": "...", "neg_response": "..."}

``pos`` shows the trait, ``neg`` does not; ``split`` is fixed in the file (every fifth
pair is ``val``). Public datasets are read from the data root (``TRAITLAB_DATA_ROOT``),
never copied into the project.

Example:
    >>> ds = load_trait("optimism")
    >>> len(ds.split("train")), len(ds.split("val"))
    (88, 22)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .chat import ChatFormat, Encoded
from .paths import data_root, project_data

Split = Literal["train", "val"]


class DataError(ValueError):
    """A missing, empty or malformed prompt set."""


@dataclass(frozen=True)
class TraitPair:
    id: str
    group: str
    split: Split
    pos_prompt: str
    pos_response: str
    neg_prompt: str
    neg_response: str


@dataclass(frozen=True)
class TraitDataset:
    """The contrastive pairs of one trait."""

    trait: str
    pairs: tuple[TraitPair, ...]

    def split(self, split: Split) -> tuple[TraitPair, ...]:
        return tuple(p for p in self.pairs if p.split == split)

    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.group for p in self.pairs))

    def encode(self, fmt: ChatFormat, split: Split | None = None) -> tuple[list[Encoded], list[Encoded]]:
        """(positives, negatives) as prompt + response token ids."""
        pairs = self.pairs if split is None else self.split(split)
        pos = [fmt.encode(p.pos_prompt, p.pos_response) for p in pairs]
        neg = [fmt.encode(p.neg_prompt, p.neg_response) for p in pairs]
        return pos, neg


_FIELDS = {f for f in TraitPair.__dataclass_fields__}


def read_project_jsonl(*parts: str) -> list[dict]:
    """Rows of a JSONL file we ship under ``data/``; ``DataError`` if missing or empty."""
    path = project_data(*parts)
    if not path.exists():
        raise DataError(f"{path} is missing; it ships with the repository (data/)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def available_traits(folder: Path | None = None) -> list[str]:
    folder = folder or project_data("traits")
    return sorted(p.stem for p in folder.glob("*.jsonl"))


def load_trait(trait: str, *, max_pairs_per_split: int | None = None,
               folder: Path | None = None) -> TraitDataset:
    """Load ``data/traits/<trait>.jsonl`` (or from ``folder``), validating every line.

    ``max_pairs_per_split`` keeps the first N train and first N val pairs (for quick runs).
    """
    folder = folder or project_data("traits")
    path = folder / f"{trait}.jsonl"
    if not path.exists():
        raise DataError(f"no prompt set for trait {trait!r} at {path}; available: "
                        f"{', '.join(available_traits(folder)) or 'none'}")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err})") from None
        if set(rec) != _FIELDS:
            raise DataError(f"{path}:{n}: keys {sorted(rec)} differ from {sorted(_FIELDS)}")
        if rec["split"] not in ("train", "val"):
            raise DataError(f"{path}:{n}: split must be 'train' or 'val', got {rec['split']!r}")
        pairs.append(TraitPair(**rec))
    return _limited(TraitDataset(trait, tuple(pairs)), max_pairs_per_split)


def _limited(ds: TraitDataset, max_pairs_per_split: int | None) -> TraitDataset:
    """Keep the first N train and first N val pairs; insist on at least 2 of each."""
    pairs = ds.pairs
    if max_pairs_per_split is not None:
        pairs = tuple(p for s in ("train", "val") for p in ds.split(s)[:max_pairs_per_split])
    ds = TraitDataset(ds.trait, pairs)
    for s in ("train", "val"):
        if len(ds.split(s)) < 2:
            raise DataError(f"{ds.trait!r} has {len(ds.split(s))} {s} pairs; at least 2 are needed")
    return ds


def load_group(spec: str, *, max_pairs_per_split: int | None = None,
               folder: Path | None = None) -> TraitDataset:
    """The pairs named by ``"<trait>"`` or ``"<trait>:<group>,<group>,..."``.

    The second form keeps only pairs whose ``group`` field is listed; it is how a trait
    file is split into distributions (e.g. optimism's institutional vs social domains).

    Example:
        >>> ds = load_group("optimism:tech,career")
        >>> ds.groups(), ds.trait
        (('tech', 'career'), 'optimism:tech,career')
    """
    trait, sep, wanted = spec.partition(":")
    full = load_trait(trait.strip(), folder=folder)
    if not sep:
        return _limited(full, max_pairs_per_split)
    names = [g.strip() for g in wanted.split(",") if g.strip()]
    unknown = [g for g in names if g not in full.groups()]
    if unknown or not names:
        raise DataError(f"group spec {spec!r}: unknown groups {unknown or '(none listed)'}; "
                        f"{trait!r} has {', '.join(full.groups())}")
    pairs = tuple(p for p in full.pairs if p.group in names)
    return _limited(TraitDataset(spec, pairs), max_pairs_per_split)


# ---- public datasets in the data root -------------------------------------------------

PUBLIC_FILES: dict[str, str] = {
    "xstest": "xstest/xstest_prompts.csv",
    "advbench": "refusal_direction/dataset/raw/advbench.csv",
    "harmbench_test": "harmbench/harmbench_behaviors_text_test.csv",
    "harmbench_val": "harmbench/harmbench_behaviors_text_val.csv",
    "jailbreakbench": "jbb/harmful-behaviors.refusal_direction-raw.csv",
    "jbb_benign": "jbb/benign-behaviors.csv",
    "strongreject": "strongreject/strongreject_dataset.csv",
    "alpaca_seed": "alpaca/seed_tasks.jsonl",
}


def public_path(name: str) -> Path:
    """Path of public dataset ``name`` under the data root, or a clear error."""
    if name not in PUBLIC_FILES:
        raise DataError(f"unknown public dataset {name!r}; known: {', '.join(PUBLIC_FILES)}")
    path = data_root() / PUBLIC_FILES[name]
    if not path.exists():
        raise DataError(
            f"dataset {name!r} not found at {path}. The data root is {data_root()}; point it at a "
            "folder holding the public datasets, e.g. `export TRAITLAB_DATA_ROOT=../shared/datasets`."
        )
    return path


def read_csv(name: str) -> list[dict[str, str]]:
    with open(public_path(name), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"dataset {name!r} at {public_path(name)} is empty")
    return rows


def nonempty(items: Sequence, what: str) -> Sequence:
    """Return ``items``, or raise a clear error naming ``what`` when empty."""
    if len(items) == 0:
        raise DataError(f"{what} is empty")
    return items


# ---- prompt sets for the refusal findings ----------------------------------------------

@dataclass(frozen=True)
class Prompt:
    """One user prompt with where it came from and its category/label, if any."""

    text: str
    source: str
    category: str = ""
    label: str = ""


_HARMFUL_COLUMNS = {"advbench": "goal", "harmbench_test": "Behavior", "harmbench_val": "Behavior",
                    "jailbreakbench": "Goal", "strongreject": "forbidden_prompt"}
HARMFUL_SOURCES: tuple[str, ...] = tuple(_HARMFUL_COLUMNS)


def harmful_prompts(sources: Sequence[str], n: int, seed: int) -> list[Prompt]:
    """``n`` harmful requests sampled (seeded, without replacement) from the public sets.

    HarmBench rows that need a context string (contextual/copyright) are skipped.
    """
    import random

    pool: list[Prompt] = []
    for src in sources:
        if src not in _HARMFUL_COLUMNS:
            raise DataError(f"unknown harmful source {src!r}; choose from {', '.join(_HARMFUL_COLUMNS)}")
        for row in read_csv(src):
            if src.startswith("harmbench") and row.get("FunctionalCategory") != "standard":
                continue
            pool.append(Prompt(row[_HARMFUL_COLUMNS[src]].strip(), src, row.get("SemanticCategory")
                               or row.get("Category") or row.get("category") or ""))
    pool = list({p.text: p for p in pool}.values())
    if n > len(pool):
        raise DataError(f"asked for {n} harmful prompts but {', '.join(sources)} hold only {len(pool)}")
    return random.Random(seed).sample(pool, n)


def xstest_prompts() -> list[Prompt]:
    """All 450 XSTest prompts; ``category`` is the XSTest type, ``label`` safe/unsafe."""
    return [Prompt(r["prompt"], "xstest", r["type"], r["label"]) for r in read_csv("xstest")]


def edge_prompts() -> list[Prompt]:
    """The borderline-but-benign prompts we wrote (``data/refusal/edge.jsonl``)."""
    path = project_data("refusal", "edge.jsonl")
    if not path.exists():
        raise DataError(f"missing {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Prompt(r["prompt"], "edge", r["category"], "safe") for r in rows]


def harmless_prompts(n: int, seed: int) -> list[Prompt]:
    """``n`` harmless instructions (Self-Instruct seed tasks without an input field)."""
    import random

    rows = [json.loads(line) for line in public_path("alpaca_seed").read_text().splitlines() if line.strip()]
    pool = [Prompt(r["instruction"], "alpaca_seed") for r in rows
            if not any(i.get("input") for i in r.get("instances", []))]
    if n > len(pool):
        raise DataError(f"asked for {n} harmless prompts but only {len(pool)} are available")
    return random.Random(seed).sample(pool, n)
