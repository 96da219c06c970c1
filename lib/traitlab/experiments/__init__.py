"""One module per finding: its ``Params`` dataclass and the functions its notebook calls."""

from __future__ import annotations

from . import (
          generalization,
          judge_calibration,
          method_comparison,
          model_chain,
          refusal_dial,
          sft_dpo_transfer,
)

PARAMS = {"method_comparison": method_comparison.Params, "refusal_dial": refusal_dial.Params,
          "cross_language": generalization.CrossLanguage, "cross_topic": generalization.CrossTopic,
          "cross_distribution": generalization.CrossDistribution,
          "judge_calibration": judge_calibration.Params, "model_chain": model_chain.Params,
          "sft_dpo_transfer": sft_dpo_transfer.Params}
"""Notebook name → its Params dataclass (used by ``traitlab render`` to validate profiles)."""
