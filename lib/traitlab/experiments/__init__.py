"""One module per finding: its ``Params`` dataclass and the functions its notebook calls."""

from __future__ import annotations

from . import (
          base_to_instruct,
          components,
          elicitation,
          generalization,
          jailbreak_blocking,
          judge_calibration,
          method_comparison,
          metrics_vs_steering,
          model_chain,
          performance,
          ratio_zones,
          refusal_dial,
          sft_dpo_transfer,
          token_dynamics,
)

PARAMS = {"method_comparison": method_comparison.Params, "refusal_dial": refusal_dial.Params,
          "cross_language": generalization.CrossLanguage, "cross_topic": generalization.CrossTopic,
          "cross_distribution": generalization.CrossDistribution,
          "judge_calibration": judge_calibration.Params, "model_chain": model_chain.Params,
          "sft_dpo_transfer": sft_dpo_transfer.Params, "components": components.Params,
          "token_dynamics": token_dynamics.Params, "jailbreak_blocking": jailbreak_blocking.Params,
          "base_to_instruct": base_to_instruct.Params, "metrics_vs_steering": metrics_vs_steering.Params,
          "elicitation": elicitation.Params, "performance": performance.Params,
          "ratio_zones": ratio_zones.Params}
"""Notebook name → its Params dataclass (used by ``traitlab render`` to validate profiles)."""
