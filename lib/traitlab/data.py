"""Prompt sets: the contrastive trait pairs we write, and public datasets in the data root.

A trait file ``data/traits/<trait>.jsonl`` holds one pair per line::

    {"id": "optimism-001", "group": "tech", "split": "train",
     "pos_prompt": "...", "pos_response": "...", "neg_prompt": "...", "neg_response": "..."}

``pos`` shows the trait, ``neg`` does not; ``split`` is fixed in the file (every fifth
pair is ``val``). ``load_trait(..., folder=...)`` reads one's own prompt sets from any
folder, with the same checks. Public datasets are read from the data root
(``TRAITLAB_DATA_ROOT``), never copied into the project.

Every malformed input fails in one line naming the file, the line (or row) and the field,
and saying how to fix it: a line that is not JSON or not an object, a missing or unknown
key, a null, empty or whitespace-only text, a duplicate id, the same example in both
splits (it would leak), a CSV without the columns we read.

Example:
    >>> ds = load_trait("optimism")
    >>> len(ds.split("train")), len(ds.split("val"))
    (88, 22)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .chat import ChatFormat, Encoded
from .paths import PROJECT_ROOT, data_root, project_data

if TYPE_CHECKING:
    import pandas as pd

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
_TEXT_FIELDS = ("id", "group", "pos_prompt", "pos_response", "neg_prompt", "neg_response")


_READ: dict[str, str] = {}
"""sha256 of every data file this process has read, by its label (``files_read``)."""

DATA_ROOT_LABEL = "$TRAITLAB_DATA_ROOT/"
"""How a file under the data root is named in ``files_read`` (the root itself differs by machine)."""


def data_label(path: Path) -> str:
    """A data file's name in run records: ``data/...`` for the prompt sets we ship,
    ``$TRAITLAB_DATA_ROOT/...`` for public datasets, else its absolute path (one's own folder).

    >>> data_label(project_data("judge", "anchors.jsonl"))
    'data/judge/anchors.jsonl'
    """
    p = Path(path).expanduser().resolve()
    for root, tag in ((PROJECT_ROOT / "data", "data/"), (data_root(), DATA_ROOT_LABEL)):
        try:
            return tag + p.relative_to(Path(root).expanduser().resolve()).as_posix()
        except ValueError:
            continue
    return str(p)


def labelled_path(label: str) -> tuple[Path, bool]:
    """The file a ``data_label`` names on this machine, and whether it is ours (a file we ship or
    one's own folder) rather than a public dataset under the data root.

    >>> labelled_path("data/judge/anchors.jsonl") == (project_data("judge", "anchors.jsonl"), True)
    True
    """
    if label.startswith(DATA_ROOT_LABEL):
        return data_root() / label.removeprefix(DATA_ROOT_LABEL), False
    return (PROJECT_ROOT / label if label.startswith("data/") else Path(label)), True


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    _READ[data_label(path)] = hashlib.sha256(raw).hexdigest()
    return raw


def files_read() -> dict[str, str]:
    """Every data file read so far in this process (``read_jsonl``, ``read_csv``: every prompt
    set, gold set and public dataset), label (``data_label``) → sha256 of its bytes. The run record
    keeps it, so a report whose inputs changed since it was rendered can be told
    (``traitlab.cli.data_drift``).

    >>> _ = load_trait("optimism")
    >>> len(files_read()["data/traits/optimism.jsonl"])
    64
    """
    return dict(sorted(_READ.items()))


def check_once(seen: dict, key: Hashable, path: str | os.PathLike, line: int, what: str, why: str) -> None:
    """Note that ``key`` is on ``line`` of ``path``; a ``DataError`` naming both lines when an
    earlier line already had it (a repeated row counts twice and narrows every interval). ``what``
    names the repeated thing, ``why`` says why it must not repeat or what to do.

    >>> seen = {}
    >>> check_once(seen, "q1", "my.jsonl", 3, "id 'q1'", "ids must be unique")
    >>> check_once(seen, "q1", "my.jsonl", 7, "id 'q1'", "ids must be unique")
    Traceback (most recent call last):
    ...
    traitlab.data.DataError: my.jsonl:7: id 'q1' already on line 3; ids must be unique
    """
    first = seen.setdefault(key, line)
    if first != line:
        raise DataError(f"{path}:{line}: {what} already on line {first}; {why}")


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of ``path``; a one-line ``DataError``
    naming ``path:line`` for a line that is not JSON, not an object, or lacks a ``required``
    key, or when the file is missing or empty.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = f.write_text('{"a": 1}\\n\\n[2]\\n')
    >>> read_jsonl(f)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    traitlab.data.DataError: ...x.jsonl:3: a JSON list, not an object; write one {...} object per line
    """
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        text = _read_bytes(path).decode("utf-8-sig")  # a byte-order mark (some editors write one) is not text
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
                        ) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}); "
                            "write one JSON object per line") from None
        if not isinstance(rec, dict):
            kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
                    type(None): "null"}.get(type(rec), type(rec).__name__)
            raise DataError(f"{path}:{n}: a JSON {kind}, not an object; write one {{...}} object per line")
        missing = [k for k in required if k not in rec]
        if missing:
            raise DataError(f"{path}:{n}: missing key(s) {', '.join(missing)}; each line needs "
                            f"{', '.join(required)}")
        rows.append((n, rec))
    if not rows:
        raise DataError(f"{path} is empty")
    return rows


def own_or_shipped(path: str | Path | None, *parts: str) -> Path:
    """``path`` (one's own file, anywhere) or, when None, the file we ship under ``data/<parts>``,
    which must exist.

    >>> own_or_shipped(None, "judge", "anchors.jsonl") == project_data("judge", "anchors.jsonl")
    True
    """
    if path is not None:
        return Path(path).expanduser()
    file = project_data(*parts)
    if not file.exists():
        raise DataError(f"{file} is missing; it ships with the repository (data/)")
    return file


def read_project_jsonl(*parts: str) -> list[dict]:
    """Rows of a JSONL file we ship under ``data/``; ``DataError`` if missing, empty or malformed."""
    return [rec for _, rec in read_jsonl(own_or_shipped(None, *parts))]


def system_prompts(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """trait → {"positive": [...], "negative": [...]}: paraphrased system prompts that ask for a
    trait and for its opposite, one line per trait (a single string counts as a list of one):
    ``path`` (a JSONL file anywhere; a report's ``instructions_file``) or the shipped
    ``data/elicitation/instructions.jsonl``. The elicitation report fits vectors from the answers
    they produce; the steering reports use them as the judge's positive control.

    >>> sp = system_prompts()
    >>> len(sp["optimism"]["positive"]) >= 5
    True
    """
    file = own_or_shipped(path, "elicitation", "instructions.jsonl")
    out: dict[str, dict[str, list[str]]] = {}
    lines: dict[str, int] = {}
    for n, r in read_jsonl(file, ["trait", "positive", "negative"]):
        trait = r["trait"]
        if not isinstance(trait, str) or not trait.strip():
            raise DataError(f"{file}:{n}: trait must be a trait's name, got {json.dumps(trait)}")
        if trait in lines:
            raise DataError(f"{file}:{n}: trait {trait!r} already has its system prompts on line {lines[trait]}; "
                            "put every paraphrase in that line's lists")
        pols = {}
        for pol in ("positive", "negative"):
            v = [r[pol]] if isinstance(r[pol], str) else r[pol]
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
                raise DataError(f"{file}:{n}: {pol} must be a non-empty string or list of non-empty strings")
            pols[pol] = list(v)
        if set(pols["positive"]) & set(pols["negative"]):
            raise DataError(f"{file}:{n}: a system prompt is both positive and negative; the two must ask "
                            "for opposite things")
        out[trait], lines[trait] = pols, n
    return out


def _traits_folder(folder: str | Path | None) -> Path:
    """The folder trait files are read from: ``folder`` (anywhere on disk) or ``data/traits``."""
    if folder is None:
        return project_data("traits")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"traits folder {str(folder)!r} does not exist or is not a folder; point "
                        "traits_dir at a folder of <trait>.jsonl files")
    return path


def available_traits(folder: str | Path | None = None) -> list[str]:
    """The trait names (``<name>.jsonl``) in ``folder`` (default: the shipped ``data/traits``)."""
    return sorted(p.stem for p in _traits_folder(folder).glob("*.jsonl"))


def _check_pair(path: Path, n: int, rec: dict) -> TraitPair:
    """One validated line of a trait file, or a one-line ``DataError`` naming ``path:n``."""
    missing, extra = sorted(_FIELDS - set(rec)), sorted(set(rec) - _FIELDS)
    if missing or extra:
        what = "; ".join(x for x in (f"missing keys {missing}" if missing else "",
                                     f"unknown keys {extra}" if extra else "") if x)
        raise DataError(f"{path}:{n}: {what}; each line needs exactly {sorted(_FIELDS)}")
    for k in _TEXT_FIELDS:
        v = rec[k]
        if not isinstance(v, str):
            raise DataError(f"{path}:{n}: {k} is {json.dumps(v)}, not a string; write the text in quotes")
        if not v.strip():
            raise DataError(f"{path}:{n}: {k} is empty; every prompt and response needs text")
    if rec["split"] not in ("train", "val"):
        raise DataError(f"{path}:{n}: split must be 'train' or 'val', got {rec['split']!r}")
    if (rec["pos_prompt"], rec["pos_response"]) == (rec["neg_prompt"], rec["neg_response"]):
        raise DataError(f"{path}:{n}: the pos and neg prompt and response are identical; a pair must contrast")
    return TraitPair(**rec)


def _check_leaks(path: Path, lines: list[int], pairs: list[TraitPair]) -> None:
    """Duplicate ids, a pair repeated under another id (it would count twice and narrow every
    interval), and one example (prompt + response) in both splits, are errors."""
    first_id: dict[str, int] = {}
    first_pair: dict[tuple[str, ...], int] = {}
    seen: dict[tuple[str, str, str], tuple[str, int]] = {}
    for n, p in zip(lines, pairs, strict=True):
        check_once(first_id, p.id, path, n, f"id {p.id!r}", "ids must be unique")
        check_once(first_pair, (p.pos_prompt, p.pos_response, p.neg_prompt, p.neg_response), path, n,
                   "the same pair (prompts and responses)", "remove one")
        for side, ex in (("pos", (p.pos_prompt, p.pos_response)), ("neg", (p.neg_prompt, p.neg_response))):
            key = (side, *ex)
            if key in seen and seen[key][0] != p.split:
                raise DataError(f"{path}:{n}: the same {side} prompt and response are on line {seen[key][1]} "
                                f"({seen[key][0]}) and here ({p.split}): the split would leak; remove one")
            seen.setdefault(key, (p.split, n))


def load_trait(trait: str, *, max_pairs_per_split: int | None = None,
               folder: str | Path | None = None) -> TraitDataset:
    """Load ``data/traits/<trait>.jsonl`` (or ``<folder>/<trait>.jsonl``, any folder on disk),
    validating every line (see the module docstring).

    ``max_pairs_per_split`` keeps the first N train and first N val pairs (for quick runs).
    """
    if not isinstance(trait, str) or not trait.strip() or "/" in trait or "\\" in trait:
        raise DataError(f"trait name {trait!r} must be a file stem such as 'optimism'; put your "
                        "own files in a folder and pass folder= (traits_dir)")
    folder = _traits_folder(folder)
    path = folder / f"{trait}.jsonl"
    if not path.exists():
        raise DataError(f"no prompt set for trait {trait!r} at {path}; available: "
                        f"{', '.join(available_traits(folder)) or 'none'}")
    rows = read_jsonl(path)
    pairs = [_check_pair(path, n, rec) for n, rec in rows]
    _check_leaks(path, [n for n, _ in rows], pairs)
    return _limited(TraitDataset(trait, tuple(pairs)), max_pairs_per_split)


def _limited(ds: TraitDataset, max_pairs_per_split: int | None) -> TraitDataset:
    """Keep the first N train and first N val pairs; insist on at least 2 of each."""
    pairs = ds.pairs
    if max_pairs_per_split is not None:
        pairs = tuple(p for s in ("train", "val") for p in ds.split(s)[:max_pairs_per_split])
    ds = TraitDataset(ds.trait, pairs)
    for s in ("train", "val"):
        if len(ds.split(s)) < 2:
            raise DataError(f"{ds.trait!r} has {len(ds.split(s))} {s} pairs; at least 2 are needed "
                            f"(mark more lines of its file \"split\": \"{s}\")")
    return ds


def load_group(spec: str, *, max_pairs_per_split: int | None = None,
               folder: str | Path | None = None) -> TraitDataset:
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


REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "xstest": ("prompt", "type", "label"),
    "advbench": ("goal",),
    "harmbench_test": ("Behavior", "FunctionalCategory"),
    "harmbench_val": ("Behavior", "FunctionalCategory"),
    "jailbreakbench": ("Goal",),
    "jbb_benign": ("goal",),
    "strongreject": ("forbidden_prompt",),
}
"""The columns we read from each public CSV (a file without them is the wrong file)."""


def read_csv(name: str) -> list[dict[str, str]]:
    """Rows of public CSV ``name``; a one-line ``DataError`` when it is empty, lacks a column
    we read (``REQUIRED_COLUMNS``), or has a row whose value in one is missing or blank."""
    path = public_path(name)
    want = REQUIRED_COLUMNS.get(name, ())
    try:
        with io.StringIO(_read_bytes(path).decode("utf-8-sig"), newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in want if c not in header]
            if missing:
                raise DataError(f"dataset {name!r} at {path}: missing column(s) {', '.join(missing)} "
                                f"(found {', '.join(map(str, header)) or 'no header'}); is it the right "
                                "file? Fetch it again with `traitlab datasets fetch`")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"dataset {name!r} at {path} is not a readable UTF-8 CSV ({err}); fetch it "
                        "again with `traitlab datasets fetch`") from None
    if not rows:
        raise DataError(f"dataset {name!r} at {path} is empty")
    for i, row in enumerate(rows, 2):  # line 1 is the header
        for c in want:
            if not (row.get(c) or "").strip():
                raise DataError(f"dataset {name!r} at {path}:{i}: column {c} is empty; the file is "
                                "damaged or not the published one")
    check_pinned(name, path)
    return rows


UNPINNED_ENV = "TRAITLAB_UNPINNED_DATA"
"""Set to 1 to read public files whose bytes differ from their pinned sha256 (another version of
a dataset, one's own edit): the run record still names the sha256 each render read."""


def check_pinned(name: str, path: Path) -> None:
    """A one-line ``DataError`` when public file ``name`` (already read) differs from the sha256
    ``traitlab.datasets`` pins for it: a file cut short or edited can still parse, and a report
    would rest on other prompts than it says. ``$TRAITLAB_UNPINNED_DATA=1`` allows it."""
    from .datasets import MANIFEST

    pin = MANIFEST[name].sha256 if name in MANIFEST else None
    got = _READ.get(data_label(path))
    if pin is None or got is None or got == pin or os.environ.get(UNPINNED_ENV) == "1":
        return
    raise DataError(f"dataset {name!r} at {path} has sha256 {got[:12]}…, not the pinned {pin[:12]}… (damaged, "
                    f"cut short or another version): `traitlab datasets verify` checks every file and "
                    f"`traitlab datasets fetch` restores them; set {UNPINNED_ENV}=1 to use it as it is")


def nonempty(items: Sequence, what: str) -> Sequence:
    """Return ``items``, or raise a clear error naming ``what`` when empty."""
    if len(items) == 0:
        raise DataError(f"{what} is empty")
    return items


QUESTION_SPLITS = ("train", "test")
"""The splits of a question set: ``train`` (what instructed answers are fitted on) and ``test``
(what steered answers are judged on)."""


def opinion_questions(split: str = "test", n: int | None = None, path: str | Path | None = None) -> pd.DataFrame:
    """Open questions the steering reports generate answers to, the first ``n`` of ``split``:
    ``path`` (a JSONL file anywhere, one ``{"id", "question", "split"}`` object per line; a
    report's ``questions_file``) or the shipped ``data/steering/optimism_questions.jsonl``. Ids
    and questions must be unique and ``split`` one of ``QUESTION_SPLITS``; each fault is a
    one-line ``DataError`` naming the file and line.

    >>> q = opinion_questions("test", 3)
    >>> len(q), {"id", "question"} <= set(q.columns)
    (3, True)
    """
    import pandas as pd

    file = own_or_shipped(path, "steering", "optimism_questions.jsonl")
    rows, ids, texts = [], {}, {}
    for line, r in read_jsonl(file, ["id", "question", "split"]):
        q = r["question"]
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{file}:{line}: question must be non-empty text, got {json.dumps(q)}")
        if r["split"] not in QUESTION_SPLITS:
            raise DataError(f"{file}:{line}: split must be one of {', '.join(QUESTION_SPLITS)}, got {r['split']!r}")
        check_once(ids, str(r["id"]), file, line, f"id {r['id']!r}", "ids must be unique")
        check_once(texts, " ".join(q.split()).lower(), file, line, "the same question",
                   "each question appears once (a repeat counts twice and narrows every interval)")
        rows.append(r)
    df = pd.DataFrame(rows)
    df = df[df.split == split].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{file} has no {split!r} questions")
    if n is not None and n > len(df):
        raise DataError(f"asked for {n} {split} questions but {file} has {len(df)}: lower n_questions "
                        "(or add questions to the file)")
    return df.head(n) if n is not None else df


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
    return [Prompt(r["prompt"], "edge", r["category"], "safe")
            for _, r in read_jsonl(path, required=("prompt", "category"))]


def harmless_prompts(n: int, seed: int) -> list[Prompt]:
    """``n`` harmless instructions (Self-Instruct seed tasks without an input field)."""
    import random

    path = public_path("alpaca_seed")
    rows = [r for _, r in read_jsonl(path, required=("instruction",))]
    check_pinned("alpaca_seed", path)
    pool = [Prompt(r["instruction"], "alpaca_seed") for r in rows
            if not any(isinstance(i, dict) and i.get("input") for i in r.get("instances") or [])]
    if n > len(pool):
        raise DataError(f"asked for {n} harmless prompts but only {len(pool)} are available")
    return random.Random(seed).sample(pool, n)


BENIGN_SOURCES: tuple[str, ...] = ("alpaca_seed", "jbb_benign", "xstest_safe")
"""Public sets of benign requests: Self-Instruct seed tasks (everyday instructions), the
JailbreakBench benign behaviours (each on the topic of a harmful one: the harder test of
over-refusal), and XSTest's safe prompts (written to sound unsafe)."""


def benign_prompts(source: str, n: int, seed: int) -> list[Prompt]:
    """``n`` benign requests sampled (seeded, without replacement) from ``source``, one of
    ``BENIGN_SOURCES``; ``category`` is the set's category where it has one."""
    import random

    if source == "alpaca_seed":
        return harmless_prompts(n, seed)
    if source == "jbb_benign":
        pool = [Prompt(r["goal"].strip(), source, r.get("Category") or r.get("category") or "")
                for r in read_csv("jbb_benign")]
    elif source == "xstest_safe":
        pool = [p for p in xstest_prompts() if p.label == "safe"]
    else:
        raise DataError(f"unknown benign source {source!r}; choose from {', '.join(BENIGN_SOURCES)}")
    pool = list({p.text: p for p in pool}.values())
    if n > len(pool):
        raise DataError(f"asked for {n} benign prompts but {source} holds only {len(pool)}")
    return random.Random(seed).sample(pool, n)
