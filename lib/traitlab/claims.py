"""The claims ledger: every number the README states as a finding, read from a result record.

``claims.yaml`` (project root) lists claims. Each names a report's result record
(``reports/<report>.results.json``), the ``quantity`` in it, and the README ``phrase`` that
states it, with ``{}`` where the number goes and a format spec for its precision
(``"probe {:.1f}%"``; ``{lo:.1f}`` and ``{hi:.1f}`` state its CI; ``scale`` turns a fraction
into percent first). The record is the one
source: ``check`` formats the record's value into the phrase and asks the README for it, so a
re-rendered report that moved a number fails until the README says the new number (the message
gives the phrase to write), and a README edit that drifts from the record fails too. Provenance
(model fingerprint, git commit, date) comes from the same record's run record.

Example:
    >>> c = Claim("x", "method_comparison", "probe.mean_accuracy_pct", "probe {:.1f}%")
    >>> c.phrase_for(98.18497)
    'probe 98.2%'
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .paths import PROJECT_ROOT
from .records import RecordError, ResultRecord, read

LEDGER = PROJECT_ROOT / "claims.yaml"
_FIELDS = {"", "value", "lo", "hi"}


class ClaimError(ValueError):
    """A malformed ledger entry."""


@dataclass(frozen=True)
class Claim:
    """One README figure: ``quantity`` of ``reports/<report>.results.json`` written as ``phrase``."""

    id: str
    report: str
    quantity: str
    phrase: str
    scale: float = 1.0
    note: str = ""

    def __post_init__(self) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.phrase) if f is not None]
        if sum(f in ("", "value") for f in fields) != 1 or not set(fields) <= _FIELDS:
            raise ClaimError(f"claims.yaml: {self.id}: phrase {self.phrase!r} needs exactly one '{{}}' "
                             "(with a format spec such as {:.1f}) where the number goes, and optionally "
                             "{lo:...} and {hi:...} for its CI")
        if self.scale <= 0:
            raise ClaimError(f"claims.yaml: {self.id}: scale must be > 0, got {self.scale}")

    @property
    def needs_ci(self) -> bool:
        return any(f in ("lo", "hi") for _, f, _, _ in string.Formatter().parse(self.phrase))

    def phrase_for(self, value: float, ci: tuple[float, float] | None = None) -> str:
        """The README phrase stating ``value`` (and its ``ci``) after ``scale``; negative numbers
        with a prose minus (−)."""
        numbers = {"": value, "value": value, **({"lo": ci[0], "hi": ci[1]} if ci else {})}
        out = []
        for literal, name, spec, _ in string.Formatter().parse(self.phrase):
            out.append(literal)
            if name is not None:
                out.append(format(numbers[name] * self.scale, spec or "").replace("-", "\u2212"))
        return "".join(out)

    @property
    def record_path(self) -> str:
        return f"reports/{self.report}.results.json"


def load(path: Path = LEDGER) -> list[Claim]:
    rows = yaml.safe_load(path.read_text()) or []
    claims, seen = [], set()
    for r in rows:
        unknown = set(r) - set(Claim.__dataclass_fields__)
        if unknown:
            raise ClaimError(f"{path.name}: {r.get('id', '?')}: unknown keys {sorted(unknown)} "
                             f"(known: {', '.join(Claim.__dataclass_fields__)})")
        try:
            c = Claim(**r)
        except TypeError as err:
            raise ClaimError(f"{path.name}: {r.get('id', '?')}: {err}") from None
        if c.id in seen:
            raise ClaimError(f"{path.name}: duplicate claim id {c.id!r}")
        seen.add(c.id)
        claims.append(c)
    return claims


def _records(claims: list[Claim], root: Path) -> dict[str, ResultRecord | str]:
    """Each named report's record, or the one-line reason it cannot be read."""
    out: dict[str, ResultRecord | str] = {}
    for c in claims:
        if c.report not in out:
            try:
                out[c.report] = read(root / c.record_path)
            except RecordError as err:
                out[c.report] = str(err)
    return out


def _prose(text: str) -> str:
    """Text as compared: the prose minus as ``-`` and any run of whitespace as one space, so a
    reflowed README paragraph still states the same figures."""
    return " ".join(text.replace("\u2212", "-").split())


def check(claims: list[Claim], root: Path = PROJECT_ROOT) -> list[str]:
    """Every problem: a missing record or quantity, a README that does not state the record's number."""
    problems = []
    readme = _prose((root / "README.md").read_text())
    records = _records(claims, root)
    for c in claims:
        rec = records[c.report]
        if isinstance(rec, str):
            problems.append(f"{c.id}: {rec}")
            continue
        try:
            q = rec[c.quantity]
        except KeyError as err:
            problems.append(f"{c.id}: {err.args[0]}")
            continue
        if c.needs_ci and q.ci is None:
            problems.append(f"{c.id}: the phrase states a CI but {c.quantity} in {c.record_path} has none")
            continue
        value = q.value
        want = c.phrase_for(value, q.ci)
        if _prose(want) not in readme:
            problems.append(f"{c.id}: README should state {want!r} ({c.quantity} = {value:.6g} in "
                            f"{c.record_path}, commit {str(rec.run.get('git_commit', '?'))[:12]})")
    return problems


def table(claims: list[Claim], root: Path = PROJECT_ROOT) -> list[dict[str, Any]]:
    """One row per claim: the record's value, the README phrase and provenance (``traitlab claims``)."""
    records = _records(claims, root)
    rows = []
    for c in claims:
        rec = records[c.report]
        q = None if isinstance(rec, str) else next((q for q in rec.quantities if q.name == c.quantity), None)
        run = {} if isinstance(rec, str) else rec.run
        model = run.get("model") or {}
        rows.append({"id": c.id, "report": c.record_path, "quantity": c.quantity,
                     "value": None if q is None else q.value, "ci": None if q is None else q.ci,
                     "phrase": None if q is None or (c.needs_ci and q.ci is None) else c.phrase_for(q.value, q.ci),
                     "model": None if isinstance(rec, str) else rec.model,
                     "fingerprint": model.get("fingerprint") if isinstance(model, dict) else None,
                     "git_commit": run.get("git_commit"), "date": run.get("date")})
    return rows
