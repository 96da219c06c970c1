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
# # Perturbation-ratio zones
#
# **Claims under test** (seed, Gemma-2-2B): stated as the perturbation ratio
# `coef × ‖v‖ / ‖act‖`, steering has a sweet spot at 0.5–0.8, breaks coherence at 1.0–1.3 and
# is broken above 1.3; later layers break earlier. mean_diff vectors sit at ‖v‖/‖act‖ ≈ 0.12–0.15
# at every layer (so one coefficient works everywhere), while the probe's ratio falls 3× from
# layer 10 to layer 16.
#
# **Setup.** One trait's direction, fitted by each method on our contrastive pairs, is added at
# `site` on the response positions of several layers at a log-spaced grid of ratios, while the
# model answers held-out opinion questions greedily. The trait is read as a **win** over the
# unsteered answer to the same question, by `trait_method`: `absolute` compares the judge's 0–100
# scores of the two, `yesno` its yes/no readings of the two, `opposite` 100 − its scores of the
# trait's opposite, `probe` the readings of a probe fitted on the trait's gold answers to the
# local judge model's activations (the judge is asked nothing), `pairwise` asks the judge which
# shows more (both orders averaged). The
# judge-calibration report says which method each judge reads best, with a positive control on
# this very kind of steering (the 0.5B judge: absolute) — and coherence from the **text** (distinct-2 and log-perplexity under the
# unsteered model, floors fitted on our gold sets' coherence labels; the breaking ratios' and the
# layer trend's intervals refit those floors on resampled gold questions in every bootstrap
# replicate, since a floor fitted on a few hundred labels moves). The ratio's denominator is
# stated and compared below, because the first (attention-sink) token's activation norm can be
# many times the rest.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
trait = "optimism"
traits_dir = None
max_pairs_per_split = None
questions_file = None
site = "resid_pre"
layers = [6, 10, 14, 18]
methods = ["mean_diff", "probe"]
ratios = [0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.0, 1.3, 2.0]
norm_positions = "response"
n_questions = 16
max_new_tokens = 32
coherent_share = 0.5
trait_method = "absolute"
gold_traits = ["optimism", "uncertainty", "refusal"]
gold_dir = None
judge_backend = "local"
judge_model = "qwen2.5-coder-0.5b-instruct"
judge_base_url = None
judge_api_key_env = "OPENAI_API_KEY"
judge_offline = False
judge_dtype = "auto"
min_mass = 0.25
trait_descriptions = {}
trait_opposites = {}
batch_size = 16
n_boot = 2000
seed = 0

# %% [markdown]
# ## Setup

# %%
# NBVAL_IGNORE_OUTPUT
import numpy as np
import pandas as pd
from IPython.display import display
from traitlab import judge_power, plots, runinfo, textstats
from traitlab.experiments import ratio_zones as rz
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(rz.Params, globals())
sites = P.check()
qs = rz.questions(P)
lm = load_model(P.model, revision=P.revision, dtype=P.dtype, quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, lm))
print(P.judge().config)

# %% [markdown]
# ## Vectors and the ratio's denominator
# The separation ratio `(μ₊ − μ₋)·v̂ / ‖act‖` is the class-mean gap along each method's unit
# direction in units of the activation norm (for mean_diff, exactly the seed's ‖v‖/‖act‖). The
# norms come from the unsteered answers, teacher-forced: over the response positions (where the
# vector is added), over all positions, and over all but the first.

# %%
vectors, gaps = rz.fit_vectors(P, lm)
base = rz.baseline_answers(P, lm, qs)
norms = rz.position_norms(lm, list(zip(base.question, base.answer, strict=True)), list(range(lm.n_layers)),
                          P.site, P.batch_size)
den = rz.denominator_effect(norms, P)
sep = rz.separation_table(gaps, norms, P)
display(den.loc[P.layers].round(2))
display(sep.reset_index().pivot(index="layer", columns="method", values="separation").round(3))

# %% [markdown]
# ## Steered answers, judged
# Every (method, layer, ratio) answers the same questions; the judge compares each steered
# answer with the unsteered one.

# %%
steered = rz.steered_answers(P, lm, vectors, qs, rz.steering_norms(norms, P))
steered["win"] = rz.trait_wins(P.judge(), steered, base, P.trait, P.trait_method)
floors, gold = judge_power.calibrate_floors(lm, P.gold_traits, batch_size=P.batch_size,
                                             folder=P.gold_dir)
answers = pd.concat([base.assign(win=np.nan), steered], ignore_index=True)
answers = answers.join(textstats.coherence_measures(lm, answers, batch_size=P.batch_size))
answers["coherent"] = floors.coherent(answers)
print(f"{len(steered)} steered answers ({len(P.conditions())} conditions × {len(qs)} questions); "
      f"no usable judge reply: {int(steered.win.isna().sum())}")
print(f"Coherence floors: distinct-2 ≥ {floors.distinct2_min:.2f}, log-perplexity ≤ {floors.log_ppl_max:.2f} "
      f"(balanced accuracy {100 * floors.balanced_accuracy:.0f}% on {floors.n} gold answers); "
      f"unsteered answers coherent: {100 * answers[answers.method == 'none'].coherent.mean():.0f}%")

# %% [markdown]
# ## Zones
# Win rate (the share of questions where the steered answer shows more of the trait) and the
# share of coherent answers, per condition, with 95% bootstrap CIs over questions (the coherent
# share's also over the gold questions the floors are refitted on, so it covers where the floor
# falls). Green: the seed's sweet spot; red: its breakdown band.

# %%
refits = judge_power.FloorRefits(gold)  # each bootstrap replicate refits the floors on resampled gold questions
zones = rz.zone_table(answers, P, refits)
fig = plots.ratio_zones(zones, rz.SEED["sweet_spot"], rz.SEED["breakdown"])

# %%
display(zones[["win_rate", "win_lo", "win_hi", "coherent", "distinct2", "log_ppl", "broken"]].unstack("ratio")
        ["win_rate"].round(2))
display(zones["coherent"].unstack("ratio").round(2))

# %%
cur = rz.curves(answers, P, refits)
trend = rz.layer_trend(answers, P, refits)
display(cur.round(2))
display(trend.round(2))

# %% [markdown]
# ## What the answers look like
# One question across the ratio grid at the middle steered layer (mean_diff when present).

# %%
m0, x0 = P.methods[0], P.layers[len(P.layers) // 2]
q0 = qs.question.iloc[0]
show = answers[(answers.question == q0) & (((answers.method == m0) & (answers.layer == x0)) | (answers.method == "none"))]
display(show[["ratio", "win", "coherent", "answer"]].set_index("ratio"))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in rz.conclusions(sep, den, floors, zones, cur, trend, P):
    print("•", line)

# %% [markdown]
# ## Result record

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = rz.record(P, sep, den, floors, zones, cur, trend, lm.n_layers)
records.publish(record.with_run(**runinfo.run_record(P, lm)))
from traitlab import directions, vectors as vector_io  # noqa: E402

vector_io.publish_vectors(directions.fitted(), model=lm, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - One trait and one model; the seed's zones were measured on Gemma-2-2B with its own traits.
# - The trait reading is one judge method's; its sensitivity (and a positive control on this very
#   kind of steering) is in the judge-calibration report. A small judge misses weak effects, so a
#   late or absent sweet spot can mean an insensitive judge.
# - Coherence is read from the text (distinct-2, perplexity under the unsteered model): it sees
#   loops, broken words and language drift, not a fluent answer that ignores the question.
# - The probe's "‖v‖/‖act‖" here is the class-mean gap along its unit direction over ‖act‖ (the
#   same definition as mean_diff's); the seed does not say how it scaled its probe vectors.
# - Breaking ratios are grid values; their CIs are percentiles of the grid values over resampled
#   questions.
