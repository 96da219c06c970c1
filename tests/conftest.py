"""Shared fixtures: tiny in-process models of every architecture, and an isolated cache."""

from __future__ import annotations

import pytest
from traitlab.models import load_model
from traitlab.tiny import TINY_ARCHS


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny(request):
    return load_model(request.param)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
