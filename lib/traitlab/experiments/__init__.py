"""One module per finding: its ``Params`` dataclass and the functions its notebook calls."""

from __future__ import annotations

from . import method_comparison, refusal_dial

PARAMS = {"method_comparison": method_comparison.Params, "refusal_dial": refusal_dial.Params}
"""Notebook name → its Params dataclass (used by ``traitlab render`` to validate profiles)."""
