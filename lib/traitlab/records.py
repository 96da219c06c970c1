"""Results as data: a typed record per report, verdicts by one rule, tolerance-checked goldens.

A report's numbers live in a ``ResultRecord``: its headline ``Quantity``s (value, unit, n, CI
and a **tolerance declared where the quantity is defined**), the seed ``Claim``s it checks
(seed's value, ours, a verdict and the reason) and its tables. The notebook writes the record
beside the report (``<report>.results.json`` plus one CSV per table); text, plots, README
figures and goldens are views of it.

Tolerances follow the noise of the quantity, not the printed digits:

- a rate over ``n`` items: ``count_tolerance(n, items)`` — ``items`` items flipping (default 1);
- a mean or correlation with a standard error: ``se_tolerance(se, k)`` — ``k`` standard errors;
- a quantity that is exact given its inputs (a count of prompts, a layer index): ``EXACT``.

``compare(golden, current)`` checks every field of the golden record against the current one
within the current code's declared tolerance and returns one message per field that moved, so
float noise between CPUs passes and a real move fails, naming the field.

The verdict rule (``decide``): a seed claim is **not held** only with evidence that the test
could have seen the effect — a positive control in the same report, or a minimum detectable
effect at this n below the seed's effect; otherwise the verdict is **inconclusive**.

Example:
    >>> q = rate("probe_accuracy", 0.95, n=40, unit="fraction")
    >>> q.tolerance   # one of 40 items flipping
    0.025
    >>> v, why = decide(holds=False, seed_effect=0.3, mde=0.5)
    >>> v
    'inconclusive'
    >>> rec = ResultRecord("demo", quantities=(q,))
    >>> moved = ResultRecord("demo", quantities=(rate("probe_accuracy", 0.90, n=40),))
    >>> compare(rec, moved)
    ['demo.probe_accuracy: 0.9 vs golden 0.95 (|Δ| 0.05 > tolerance 0.025, one of 40 items)']
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from . import uncertainty
from .atomic import write_json, write_text

Verdict = Literal["holds", "not held", "not comparable", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("holds", "not held", "not comparable", "inconclusive")
SCHEMA = 1


class RecordError(ValueError):
    """A result record that cannot be read or built (message names the file and field)."""


@dataclass(frozen=True)
class Quantity:
    """One headline number with its uncertainty and the tolerance a golden check allows.

    ``tolerance`` is an absolute difference; ``tolerance_rule`` says where it comes from.
    """

    name: str
    value: float
    unit: str = ""
    n: int | None = None
    ci: tuple[float, float] | None = None
    tolerance: float = 0.0
    tolerance_rule: str = "exact"

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace(".", "").isalnum():
            raise RecordError(f"quantity name {self.name!r}: use letters, digits, '_' and '.'")
        if not (self.tolerance >= 0):
            raise RecordError(f"quantity {self.name}: tolerance must be >= 0, got {self.tolerance}")
        if self.ci is not None:
            object.__setattr__(self, "ci", (float(self.ci[0]), float(self.ci[1])))
        object.__setattr__(self, "value", float(self.value))


EXACT = (0.0, "exact")


def count_tolerance(n: int, items: float = 1.0) -> tuple[float, str]:
    """Tolerance of a rate over ``n`` items: ``items`` items changing their outcome."""
    if n <= 0:
        raise RecordError(f"count_tolerance needs n > 0, got {n}")
    what = "one" if items == 1 else f"{items:g}"
    return items / n, f"{what} of {n} items"


def se_tolerance(se: float, k: float = 1.0) -> tuple[float, str]:
    """Tolerance of an estimate with standard error ``se``: ``k`` standard errors."""
    if not math.isfinite(se) or se < 0:
        raise RecordError(f"se_tolerance needs a finite se >= 0, got {se}")
    return k * se, f"{k:g} standard error{'s' if k != 1 else ''} ({se:.3g})"


def rate(name: str, value: float, *, n: int, unit: str = "fraction", items: float = 1.0,
         ci: tuple[float, float] | None = None) -> Quantity:
    """A rate over ``n`` independent items, tolerance ``items`` items (scaled to ``unit``)."""
    tol, why = count_tolerance(n, items)
    if unit == "%":
        tol *= 100
    return Quantity(name, value, unit, n, ci, tol, why)


def estimate(name: str, value: float, *, se: float, n: int | None = None, unit: str = "",
             k: float = 1.0, ci: tuple[float, float] | None = None) -> Quantity:
    """A mean/correlation/difference with standard error ``se``, tolerance ``k`` SEs."""
    tol, why = se_tolerance(se, k)
    return Quantity(name, value, unit, n, ci, tol, why)


def exact(name: str, value: float, *, unit: str = "", n: int | None = None) -> Quantity:
    """A number that is exact given its inputs (a count, an index)."""
    return Quantity(name, value, unit, n, None, *EXACT)


@dataclass(frozen=True)
class Claim:
    """One seed claim checked by a report, with the evidence for its verdict."""

    id: str
    statement: str
    seed: str
    ours: str
    verdict: Verdict
    reason: str
    quantity: str | None = None  # name of the Quantity carrying our number, if any
    section: str | None = None  # anchor of the report section with the evidence

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise RecordError(f"claim {self.id}: verdict {self.verdict!r} is not one of {VERDICTS}")
        if not self.reason.strip():
            raise RecordError(f"claim {self.id}: a verdict needs its reason")


def decide(*, holds: bool, seed_effect: float | None = None, mde: float | None = None,
           positive_control: bool | None = None, comparable: bool = True,
           comparable_reason: str = "") -> tuple[Verdict, str]:
    """The verdict rule shared by every report.

    ``holds``: our estimate agrees with the seed's claim (the caller's test, e.g. a CI that
    excludes 0 in the seed's direction). ``seed_effect`` and ``mde`` are on the same scale
    (absolute values are compared); ``positive_control`` is True when a positive control in the
    same report showed the pipeline can see an effect of the seed's kind.

    >>> decide(holds=False, seed_effect=0.3, mde=0.1)[0]
    'not held'
    >>> decide(holds=False, positive_control=True)[0]
    'not held'
    >>> decide(holds=True)[0]
    'holds'
    """
    if not comparable:
        return "not comparable", comparable_reason or "the setting differs from the seed's"
    if holds:
        return "holds", "our estimate agrees with the seed's claim"
    if positive_control:
        return "not held", "not seen here although a positive control in this report was"
    if seed_effect is not None and mde is not None and math.isfinite(mde):
        if abs(mde) < abs(seed_effect):
            return "not held", (f"minimum detectable effect {abs(mde):.3g} is below the seed's "
                                f"effect {abs(seed_effect):.3g}, and it was not seen")
        return "inconclusive", (f"minimum detectable effect {abs(mde):.3g} is not below the seed's "
                                f"effect {abs(seed_effect):.3g}: this run could have missed it")
    return "inconclusive", "no positive control and no minimum detectable effect: no power shown"


@dataclass(frozen=True)
class ResultRecord:
    """Everything a report concludes, as data. Tables are pandas DataFrames (written as CSV)."""

    report: str
    model: str = ""
    profile: str = ""
    quantities: tuple[Quantity, ...] = ()
    claims: tuple[Claim, ...] = ()
    tables: Mapping[str, Any] = field(default_factory=dict, compare=False)
    params: Mapping[str, Any] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        names = [q.name for q in self.quantities]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise RecordError(f"record {self.report}: duplicate quantity names {sorted(dup)}")
        ids = [c.id for c in self.claims]
        if len(set(ids)) != len(ids):
            raise RecordError(f"record {self.report}: duplicate claim ids")
        known = set(names)
        for c in self.claims:
            if c.quantity is not None and c.quantity not in known:
                raise RecordError(f"record {self.report}: claim {c.id} names unknown quantity {c.quantity!r}")

    def __getitem__(self, name: str) -> Quantity:
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(f"{self.report} has no quantity {name!r}; it has {', '.join(q.name for q in self.quantities)}")

    def with_run(self, **run: Any) -> ResultRecord:
        return replace(self, run={**self.run, **run})

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "report": self.report, "model": self.model, "profile": self.profile,
                "params": dict(self.params), "run": dict(self.run),
                "quantities": [asdict(q) for q in self.quantities],
                "claims": [asdict(c) for c in self.claims],
                "tables": sorted(self.tables)}

    def write(self, folder: str | os.PathLike, stem: str | None = None) -> Path:
        """Write ``<stem>.results.json`` and ``<stem>.<table>.csv`` for each table; return the JSON path."""
        folder = Path(folder)
        stem = stem or self.report
        for name, table in self.tables.items():
            write_text(folder / f"{stem}.{name}.csv", table.to_csv(index=_keep_index(table)))
        path = folder / f"{stem}.results.json"
        write_json(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "record") -> ResultRecord:
        if d.get("schema") != SCHEMA:
            raise RecordError(f"{where}: schema {d.get('schema')!r}, this traitlab reads {SCHEMA}; re-render the report")
        try:
            qs = tuple(Quantity(**{**q, "ci": tuple(q["ci"]) if q.get("ci") else None}) for q in d["quantities"])
            cs = tuple(Claim(**c) for c in d["claims"])
            return cls(d["report"], d.get("model", ""), d.get("profile", ""), qs, cs, {},
                       d.get("params", {}), d.get("run", {}))
        except (KeyError, TypeError) as err:
            raise RecordError(f"{where}: malformed result record ({err}); re-render the report") from None


def _keep_index(table: Any) -> bool:
    index = getattr(table, "index", None)
    return index is not None and not (index.name is None and index.dtype.kind == "i" and
                                      list(index) == list(range(len(index))))


def read(path: str | os.PathLike) -> ResultRecord:
    """Load a ``*.results.json`` written by ``ResultRecord.write`` (tables: read the CSVs)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no result record; render the report first") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); re-render the report") from None
    return ResultRecord.from_json(data, where=str(path))


def compare(golden: ResultRecord, current: ResultRecord, *, verdicts: bool = True) -> list[str]:
    """One message per field of ``golden`` that ``current`` lacks or moved beyond its tolerance.

    The tolerance is the current record's (declared in the code that defines the quantity).
    The claim set must match; with ``verdicts`` a changed verdict is reported too. (A verdict
    is a threshold on quantities that are themselves checked: at a ci profile's small n it can
    sit on its threshold, so ``publish`` reports verdict changes as warnings, not failures.)
    """
    problems: list[str] = []
    cur = {q.name: q for q in current.quantities}
    for g in golden.quantities:
        where = f"{golden.report}.{g.name}"
        q = cur.get(g.name)
        if q is None:
            problems.append(f"{where}: missing from the current record")
            continue
        if math.isnan(g.value) and math.isnan(q.value):
            continue
        diff = abs(q.value - g.value)
        if not diff <= q.tolerance + 1e-12:
            problems.append(f"{where}: {q.value:.6g} vs golden {g.value:.6g} "
                            f"(|Δ| {diff:.3g} > tolerance {q.tolerance:.3g}, {q.tolerance_rule})")
        if g.n != q.n:
            problems.append(f"{where}: n {q.n} vs golden {g.n}")
    extra = sorted(set(cur) - {g.name for g in golden.quantities})
    if extra:
        problems.append(f"{golden.report}: quantities not in the golden: {', '.join(extra)}")
    gold_claims = {c.id: c for c in golden.claims}
    cur_claims = {c.id: c for c in current.claims}
    for cid in sorted(set(gold_claims) | set(cur_claims)):
        g, c = gold_claims.get(cid), cur_claims.get(cid)
        if g is None or c is None:
            problems.append(f"{golden.report}.claim {cid}: {'new' if g is None else 'missing'}")
        elif verdicts and g.verdict != c.verdict:
            problems.append(f"{golden.report}.claim {cid}: verdict {c.verdict!r} vs golden {g.verdict!r}")
    return problems


def verdict_table(record: ResultRecord) -> Any:
    """The reader's first view: one row per seed claim (seed's number, ours with CI, verdict)."""
    import pandas as pd

    rows = []
    for c in record.claims:
        ours = c.ours
        if c.quantity is not None:
            q = record[c.quantity]
            ours = format_quantity(q) if not c.ours else c.ours
        rows.append({"claim": c.statement, "seed": c.seed, "ours": ours, "verdict": c.verdict,
                     "why": c.reason})
    return pd.DataFrame(rows, columns=["claim", "seed", "ours", "verdict", "why"])


def format_quantity(q: Quantity) -> str:
    """``0.95 [0.88, 0.99] (n=40)``, with the unit."""
    unit = "" if q.unit in ("", "fraction") else (q.unit if q.unit == "%" else f" {q.unit}")
    text = f"{q.value:.3g}{unit}"
    if q.ci is not None:
        text += f" [{q.ci[0]:.3g}, {q.ci[1]:.3g}]"
    if q.n is not None:
        text += f" (n={q.n})"
    return text


class GoldenMismatch(AssertionError):
    """A result record moved beyond its declared tolerances (one line per moved field)."""


RECORD_DIR_ENV, RECORD_NAME_ENV, GOLDEN_DIR_ENV = "TRAITLAB_RECORD_DIR", "TRAITLAB_RECORD_NAME", "TRAITLAB_GOLDEN_DIR"


def publish(record: ResultRecord) -> Path | None:
    """Write ``record`` where the render asked for it, and check it against a golden if asked.

    ``traitlab render`` sets ``$TRAITLAB_RECORD_DIR`` (the report folder) and
    ``$TRAITLAB_RECORD_NAME`` (the report's file stem) and ``$TRAITLAB_PROFILE``; without them (a notebook run by hand)
    nothing is written. When ``$TRAITLAB_GOLDEN_DIR`` is set (the test suite sets it to
    ``tests/golden``), the record is compared with ``<golden dir>/<name>.results.json`` and a
    ``GoldenMismatch`` lists every field that moved beyond its tolerance.
    """
    name = os.environ.get(RECORD_NAME_ENV) or record.report
    if not record.profile and os.environ.get("TRAITLAB_PROFILE"):
        record = replace(record, profile=os.environ["TRAITLAB_PROFILE"])
    out = None
    if os.environ.get(RECORD_DIR_ENV):
        out = record.write(os.environ[RECORD_DIR_ENV], name)
    golden_dir = os.environ.get(GOLDEN_DIR_ENV)
    if golden_dir:
        golden = read(Path(golden_dir) / f"{name}.results.json")
        problems = compare(golden, record, verdicts=False)
        for moved in sorted(set(compare(golden, record)) - set(problems)):
            warnings.warn(f"{moved} (the quantities behind it are within tolerance)", stacklevel=2)
        if problems:
            raise GoldenMismatch(f"{len(problems)} field(s) of {name} moved beyond tolerance "
                                 f"(regenerate with `make golden` only if the move is intended):\n"
                                 + "\n".join(problems))
    return out


def score_mean(name: str, values: Any, *, k: float, unit: str = "points") -> Quantity:
    """Mean judge score (or paired score difference) over items, with its t-interval; tolerance
    ``k`` cautious SEs over items (``uncertainty.score_se``).

    >>> q = score_mean("baseline_trait", [40.0, 60.0], k=3)
    >>> round(q.value, 1), round(q.tolerance, 1)   # 3 × SE 10 × t(0.975, 1)/1.96
    (50.0, 194.5)
    """
    m, se, n = uncertainty.mean_se(values)
    lo, hi = uncertainty.t_interval(m, se, n)
    return estimate(name, m, se=uncertainty.score_se(se, n), n=n, unit=unit, k=k,
                    ci=None if math.isnan(lo) else (lo, hi))


def correlation(name: str, r: float, n: int, *, k: float, ci: tuple[float, float] | None = None) -> Quantity:
    """A Pearson r over ``n`` pairs; tolerance ``k`` × (1 − r²)/√(n − 3).

    >>> round(correlation("r", 0.5, 28, k=3).tolerance, 2)
    0.45
    """
    se = max(uncertainty.correlation_se(r, n), 1e-3)  # r = ±1 exactly: keep a float-noise margin
    if ci is not None and not all(math.isfinite(c) for c in ci):
        ci = None
    return estimate(name, r, se=se, n=n, k=k, ci=ci)


def quantities_from(rows: Iterable[Mapping[str, Any]]) -> tuple[Quantity, ...]:
    """Build quantities from dict rows (``name``, ``value`` and the optional fields)."""
    return tuple(Quantity(**dict(r)) for r in rows)


def names(record: ResultRecord) -> Sequence[str]:
    return [q.name for q in record.quantities]


NOISE_DECIMALS = 6
"""Decimals a ranking compares values at: far finer than any printed figure, far coarser than the
last-bit differences of float sums between CPUs."""


def ranked(frame: Any, column: str, *, decimals: int = NOISE_DECIMALS) -> Any:
    """``frame``'s rows by ``column``, highest first; values equal at ``decimals`` decimals are ties
    and keep the frame's own order. A ranking printed as text must not flip between CPUs: exact
    ties (two sites with the same held-out accuracy) differ in the last bits when BLAS sums in
    another order, and an unstable sort then orders them by that noise.

    >>> import pandas as pd
    >>> f = pd.DataFrame({"acc": [0.9, 0.95, 0.9 + 1e-15]}, index=["a", "b", "c"])
    >>> list(ranked(f, "acc").index)
    ['b', 'a', 'c']
    """
    key = frame[column].round(decimals)
    return frame.iloc[(-key).argsort(kind="stable").to_numpy()]
