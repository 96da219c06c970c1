# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Steering transfer: base → SFT → DPO
#
# **Claim under test** (seed: optimism vectors from Mistral-7B base, steering
# mistral-7b-sft-beta and zephyr-7b-beta, gpt-4.1-mini judge). At layer 12 both fine-tunes
# reached trait ≈ 84 / 83 with coherence 76 / 82; DPO resisted at early layers (layer 8: SFT
# 82.5 vs DPO 65.8) and collapsed at a cliff (layer 24, coefficient 6: trait 1.1, coherence
# 6.3). Multi-layer steering (layers 6–10) beat the best single layer (90.8 vs 89.3, baseline
# 61.3) at some coherence cost. Effective strength followed the perturbation ratio
# `coef × ‖v‖ / ‖activation‖`: 0.5–0.8 the sweet spot, 1.0–1.3 breaking, above 1.3 broken.
#
# **Our analogue.** The chain is the one `model_chain` builds offline (Gemma-3-270M base →
# SFT → DPO; see that report for how and how long); the judge is the in-process
# Qwen2.5-Coder-1.5B-Instruct, whose agreement with our labels is measured in the
# judge-calibration report. Vectors come from the **base** model only (`vector_method` on the
# trait's contrastive pairs, mean over response tokens at `site`), one unit vector per layer,
# and are added at response positions during generation. Strength is a perturbation ratio
# against each steered model's own activation norm, so a ratio is the same relative push in
# every model. Controls: the unsteered answers and a seeded random unit vector at the same
# layers and ratios. Questions are the held-out test split of
# `data/steering/optimism_questions.jsonl`.

# %% tags=["parameters"]
chain_profile = "default"
models = None
prompt_format = "plain"
trait = "optimism"
vector_method = "mean_diff"
site = "resid_pre"
layers = [3, 6, 9, 12, 15]
ratios = [0.25, 0.5, 0.75, 1.0, 1.5]
multi_layers = [4, 5, 6, 7, 8]
multi_ratios = [0.25, 0.5, 0.75]
random_seed = 1
random_ratios = None
positions = "response"
n_questions = 12
max_new_tokens = 48
coherence_floor = 50.0
judge_backend = "local"
judge_model = "qwen2.5-coder-1.5b-instruct"
judge_base_url = None
judge_api_key_env = "OPENAI_API_KEY"
judge_offline = False
judge_dtype = "auto"
min_mass = 0.25
batch_size = 16
seed = 0
traits_dir = None

# %% [markdown]
# ## Setup

# %%
# NBVAL_IGNORE_OUTPUT
import time

from IPython.display import display
from traitlab import plots, runinfo
from traitlab.experiments import sft_dpo_transfer as tr
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(tr.Params, globals())
P.check()
t_start = time.perf_counter()
specs = tr.chain_models(P)
base = load_model(specs["base"], quiet=True)
runinfo.show(runinfo.run_record(P, base))
print("chain:", specs)

# %% [markdown]
# ## Vectors from the base model

# %%
# NBVAL_IGNORE_OUTPUT
vectors = tr.base_vectors(P, base)
del base

# %%
import pandas as pd
import torch

ls = sorted(vectors)
cos = torch.stack([vectors[x] for x in ls]) @ torch.stack([vectors[x] for x in ls]).T
print(f"{P.vector_method} unit vectors at {P.site}, layers {ls}; cosine between layers:")
display(pd.DataFrame(cos.numpy(), index=ls, columns=ls).round(2))

# %% [markdown]
# ## Steer every model, judge every answer

# %%
# NBVAL_IGNORE_OUTPUT
qs = tr.questions(P)
answers = tr.steer_all(P, specs, vectors, qs)
scored = tr.judge_answers(P.judge(), answers, P.trait)
print(f"{len(scored)} answers ({len(qs)} questions × {len(tr.conditions(P))} conditions × "
      f"{len(specs)} models) in {(time.perf_counter() - t_start) / 60:.1f} min")

# %%
summ = tr.summary(scored)
display(summ[summ.kind == "baseline"])
fig = plots.steering_grid(summ, P.layers, P.ratios)

# %% [markdown]
# ## Best coherent coefficient per model and layer
# For each model and layer, the ratio with the highest mean trait score whose mean coherence
# stays at or above `coherence_floor` (Δ: change from that model's unsteered baseline).

# %%
best = tr.best_per_layer(summ, P.coherence_floor)
display(best)
display(tr.SEED)

# %% [markdown]
# ## Strength as a perturbation ratio
# Trait and coherence against the ratio, averaged over layers; the seed's sweet spot
# (0.5–0.8) is shaded and its "broken" threshold (1.3) marked. The random direction at the same
# ratios shows what a push of that size does without the trait.

# %%
ratio_df = tr.by_ratio(summ)
fig = plots.ratio_curves(ratio_df, tr.SWEET_SPOT, tr.BROKEN_FROM)
lvr = tr.learned_vs_random(summ)
display(lvr)

# %% [markdown]
# ## Multi-layer vs the best single layer

# %%
multi = tr.multi_vs_single(summ, P.coherence_floor)
display(multi)
print("seed:", tr.SEED_MULTI)

# %% [markdown]
# ## Examples

# %%
ex = scored[scored.question_id == scored.question_id.iloc[0]]
for r in ex[ex.kind.isin(["baseline", "single"])].head(8).itertuples():
    tag = "baseline" if r.kind == "baseline" else f"L{r.layer} r={r.ratio}"
    print(f"[{r.model} {tag}] trait {r.trait:.0f} coh {r.coherence:.0f}: {r.answer[:160]!r}")

# %% [markdown]
# ## Conclusions

# %%
for line in tr.conclusions(summ, best, multi, lvr, P.coherence_floor):
    print("•", line)

# %% [markdown]
# ## Result record

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = tr.record(P, scored, summ, best, multi, lvr)
records.publish(record.with_run(**runinfo.run_record(P), chain=specs))
from traitlab import directions, vectors  # noqa: E402

vectors.publish_vectors(directions.fitted(), params=P)  # the base-model vectors this report steered with
display(records.verdict_table(record))
