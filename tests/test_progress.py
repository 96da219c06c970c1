"""Progress bars follow one switch: ours and transformers' own, including the GGUF bar drawn the
first time a machine dequantises a zoo model (in a notebook kernel a widget, an output a golden
would not have)."""

from __future__ import annotations

import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from traitlab import progress


def test_hf_bars_off_inside_and_restored_after(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    drawn = gguf_utils.tqdm
    assert hf_logging.is_progress_bar_enabled()
    with progress.hf_bars():
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf_utils.tqdm([1, 2]).disable
    assert hf_logging.is_progress_bar_enabled() and gguf_utils.tqdm is drawn


def test_hf_bars_follow_show_and_the_switch(monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    with progress.hf_bars(show=True):
        assert hf_logging.is_progress_bar_enabled() and gguf_utils.tqdm is not None
        assert not gguf_utils.tqdm([1], disable=False).disable
    with progress.hf_bars(show=False):  # quiet=True
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
