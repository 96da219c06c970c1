"""One module per finding: its ``Params`` dataclass and the functions its notebook calls."""

from __future__ import annotations

from . import method_comparison

PARAMS = {"method_comparison": method_comparison.Params}
"""Notebook name → its Params dataclass (used by ``traitlab render`` to validate profiles)."""
