"""The claims ledger: every number the README states as a finding, tied to the run it came from.

``claims.yaml`` (project root) lists claims. Each names the executed report it comes from
(``reports/<name>.ipynb``), a regular expression whose named group ``value`` finds the number in
that report's text outputs, the ``value`` and ``tolerance`` we published, and optionally the
exact ``readme`` phrase that states it (at its own precision, after ``readme_scale``, e.g. 100
for a fraction the README gives in percent). ``check`` re-derives every claim from the committed
artifact and reports each one that moved, is missing, or no longer matches the README; the
run record (model fingerprint, parameters, git commit, package versions) is read from the same
report, so each claim carries its provenance.

Example:
    >>> c = Claim("x", "reports/a.ipynb", r"acc (?P<value>[\\d.]+)%", 98.2, 0.05)
    >>> c.derive("... acc 98.2% ...")
    98.2
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .paths import PROJECT_ROOT

LEDGER = PROJECT_ROOT / "claims.yaml"


class ClaimError(ValueError):
    """A malformed ledger entry."""


@dataclass(frozen=True)
class Claim:
    id: str
    report: str
    pattern: str
    value: float
    tolerance: float
    readme: str | None = None
    readme_scale: float = 1.0
    note: str = ""

    def __post_init__(self) -> None:
        try:
            rx = re.compile(self.pattern)
        except re.error as err:
            raise ClaimError(f"{self.id}: bad pattern {self.pattern!r}: {err}") from None
        if "value" not in rx.groupindex:
            raise ClaimError(f"{self.id}: pattern needs a named group (?P<value>...)")
        if self.tolerance < 0:
            raise ClaimError(f"{self.id}: tolerance must be >= 0")
        if self.readme is not None and _number_in(self.readme, self.value * self.readme_scale) is None:
            raise ClaimError(f"{self.id}: the readme phrase {self.readme!r} does not state {self.value}")

    def derive(self, text: str) -> float | None:
        """The claim's number in ``text`` (first match), or None when absent."""
        m = re.search(self.pattern, text)
        return float(m.group("value").replace("−", "-").replace("+", "").rstrip(".")) if m else None


def _number_in(phrase: str, value: float) -> float | None:
    """The number in ``phrase`` that states ``value`` at the phrase's own precision, if any."""
    for tok in re.findall(r"[−+-]?\d+(?:\.\d+)?", phrase):
        x = float(tok.replace("−", "-"))
        decimals = len(tok.split(".")[1]) if "." in tok else 0
        if abs(x - round(value, decimals)) < 1e-9:
            return x
    return None


def load(path: Path = LEDGER) -> list[Claim]:
    rows = yaml.safe_load(path.read_text()) or []
    claims, seen = [], set()
    for r in rows:
        unknown = set(r) - set(Claim.__dataclass_fields__)
        if unknown:
            raise ClaimError(f"{r.get('id', '?')}: unknown keys {sorted(unknown)}")
        c = Claim(**r)
        if c.id in seen:
            raise ClaimError(f"duplicate claim id {c.id!r}")
        seen.add(c.id)
        claims.append(c)
    return claims


def report_text(path: Path) -> str:
    """All text outputs of an executed notebook (streams, text/plain, text/html), in order."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            if "text" in o:
                parts.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
            for mime in ("text/plain", "text/html"):
                v = o.get("data", {}).get(mime)
                if v:
                    parts.append("".join(v) if isinstance(v, list) else v)
    return "\n".join(parts)


def provenance(path: Path) -> dict[str, Any]:
    """Profile, parameters and render date (notebook metadata) plus model fingerprint, git commit
    and package versions (the printed run record)."""
    nb = json.loads(path.read_text())
    meta = nb.get("metadata", {}).get("traitlab", {})
    text = report_text(path)
    grab = {k: re.search(rf"^  {k} +(\S+)\s*$", text, re.M) for k in  # run-record lines only
            ("model", "fingerprint", "git_commit", "torch", "transformers", "nnsight")}
    return {"profile": meta.get("profile"), "date": meta.get("date"), "params": meta.get("params"),
            **{k: m.group(1) if m else None for k, m in grab.items()}}


def check(claims: list[Claim], root: Path = PROJECT_ROOT) -> list[str]:
    """Every problem: a missing report, a number no longer found, a moved number, a README phrase
    that no longer appears."""
    problems = []
    readme = (root / "README.md").read_text()
    texts: dict[str, str] = {}
    for c in claims:
        path = root / c.report
        if not path.exists():
            problems.append(f"{c.id}: report {c.report} is missing")
            continue
        if c.report not in texts:
            texts[c.report] = report_text(path)
        got = c.derive(texts[c.report])
        if got is None:
            problems.append(f"{c.id}: pattern {c.pattern!r} not found in {c.report}")
        elif abs(got - c.value) > c.tolerance:
            problems.append(f"{c.id}: {c.report} now says {got}, the ledger says {c.value} ± {c.tolerance}")
        if c.readme is not None and c.readme not in readme:
            problems.append(f"{c.id}: README no longer states {c.readme!r}")
    return problems


def table(claims: list[Claim], root: Path = PROJECT_ROOT) -> list[dict[str, Any]]:
    """One row per claim with its derived value and provenance (for ``traitlab claims``)."""
    rows, cache = [], {}
    for c in claims:
        path = root / c.report
        if c.report not in cache and path.exists():
            cache[c.report] = (report_text(path), provenance(path))
        text, prov = cache.get(c.report, ("", {}))
        rows.append({"id": c.id, "value": c.value, "derived": c.derive(text) if text else None,
                     "report": c.report, "model": prov.get("model"), "fingerprint": prov.get("fingerprint"),
                     "git_commit": prov.get("git_commit"), "date": prov.get("date")})
    return rows
