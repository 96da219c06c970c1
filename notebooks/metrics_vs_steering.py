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
# # Extraction metrics vs steering success
#
# **Claims under test** (seed, Gemma-2-2B): across (trait, layer, method) cells, the effect size
# of a vector on held-out pairs predicts its steering effect best (r = 0.898) and the validation
# accuracy worst (r = 0.705); the best extraction layer (13) is not the best steering layer (8);
# a late layer reached 95% accuracy yet steered the wrong way.
#
# **Setup.** For each cell the direction is fitted on our contrastive pairs' train split and
# scored on the val split (accuracy, Cohen's d, AUROC). Then the unit direction is added at
# `site` of that layer on the response positions with coefficient `ratio` × the site's mean
# activation norm (one perturbation ratio for every cell), and the held-out questions are
# answered greedily. The judge scores the cell's trait (logprob method, 0–100); the steering
# delta is the steered mean minus the unsteered mean.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
traits = ["optimism", "formality", "humor"]
layers = [4, 8, 12, 16, 20]
methods = ["probe", "mean_diff"]
site = "resid_pre"
ratio = 0.75
n_questions = 6
max_new_tokens = 40
judge_backend = "local"
judge_model = "qwen2.5-coder-1.5b-instruct"
judge_base_url = None
judge_api_key_env = "OPENAI_API_KEY"
judge_offline = False
judge_dtype = "auto"
min_mass = 0.25
batch_size = 16
n_boot = 2000
seed = 0
traits_dir = None

# %% [markdown]
# ## Setup

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display
from traitlab import runinfo
from traitlab.experiments import metrics_vs_steering as mvs
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(mvs.Params, globals())
sites = P.check()
qs = mvs.questions(P)
lm = load_model(P.model, revision=P.revision, dtype=P.dtype, quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, lm))
print(P.judge().config)

# %% [markdown]
# ## Measurement
# Extraction metrics per cell, steered answers per cell (and one unsteered set), judge scores.

# %%
# NBVAL_IGNORE_OUTPUT
metrics, vectors = mvs.fit_cells(P, lm, sites)
answers = mvs.steer_cells(P, lm, vectors, qs)
judged = mvs.judge_cells(P.judge(), answers)

# %%
cells = mvs.deltas(metrics, judged)
print(f"{len(cells)} cells ({len(P.traits)} traits × {len(P.layers)} layers × {len(P.methods)} methods), "
      f"{len(qs)} questions each; unscored answers: {int(judged.score.isna().sum())}")
display(cells.round(3))

# %% [markdown]
# ## Which metric predicts the steering delta?

# %%
corr = mvs.correlations(cells, judged, P)
display(corr.round(3))

# %%
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
for ax, m in zip(axes, mvs.METRICS, strict=True):
    sns.scatterplot(cells, x=m, y="delta", hue="trait", style="method", ax=ax)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_title(f"r = {corr.loc[m, 'pearson_r']:.2f}")
    ax.legend().set_visible(ax is axes[0])

# %% [markdown]
# ## Best extraction layer vs best steering layer

# %%
best = mvs.best_layers(cells)
display(best.round(3))

# %%
fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
sns.lineplot(cells, x="layer", y="delta", hue="trait", style="method", marker="o", ax=ax)
ax.axhline(0, color="0.6", lw=0.8)
ax.set_ylabel("steering delta (judge points)")

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in mvs.conclusions(corr, best, cells):
    print("•", line)

# %% [markdown]
# ## Result record

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = mvs.record(P, cells, corr, best, judged)
records.publish(record.with_run(**runinfo.run_record(P, lm)))
from traitlab import directions, vectors  # noqa: E402

vectors.publish_vectors(directions.fitted(), model=lm, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - One perturbation ratio for every cell; a per-cell coefficient search could change the ranking.
# - The judge scores only the trait, not coherence: a delta can come from degraded text the judge
#   reads as the trait. Its trait calibration was measured for optimism only (judge_calibration).
# - Cells share traits and layers; bootstrap CIs over cells are optimistic.
