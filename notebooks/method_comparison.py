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
# # Extraction-method comparison
#
# **Claim under test** (seed, Gemma-2-2B-IT, 9 traits × 26 layers): supervised methods
# (`probe`, then `gradient`) find trait directions that classify held-out examples well and
# with the right sign; `mean_diff` is borderline; `pca_diff` and `ica` are no better than a
# `random` direction.
#
# **Setup.** For each trait we wrote ≥100 contrastive pairs (`data/traits/`): a user prompt
# with an assistant response that shows the trait, and one that does not. Activations are read
# at `site` for every layer and reduced to `position` (default: the mean over response tokens).
# Each method is fitted on the train split; a direction's sign is set so training positives
# project higher. We score it on the fixed val split: accuracy with a midpoint threshold on the
# cosine score, polarity, Cohen's d and AUROC (definitions: `traitlab.metrics`).

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
traits = ["refusal", "uncertainty", "formality", "optimism", "sycophancy", "humor"]
layers = None
site = "resid_post"
position = "mean"
methods = ["probe", "gradient", "mean_diff", "pca_diff", "ica", "random"]
max_pairs_per_split = None
n_random_seeds = 50
batch_size = 16
probe_C = 1.0
gradient_shrinkage = 0.1
gradient_steps = 500
ica_components = 10
acc_threshold = 0.6
n_boot = 2000
seed = 0
traits_dir = None
curve_sizes = [4, 8, 16, 32]
curve_layers = None
curve_repeats = 5
source = "written"
elicit_max_new_tokens = 48
elicit_check = "auto"
elicit_margin = 10.0
judge_backend = "local"
judge_model = "qwen2.5-coder-1.5b-instruct"
judge_base_url = None
judge_api_key_env = "OPENAI_API_KEY"
judge_offline = False
judge_dtype = "auto"
min_mass = 0.25
trait_descriptions = {}

# %% [markdown]
# ## Setup
# Parameters are validated (types, ranges, layers against the model's config) before any
# weights are loaded; then the run record: resolved parameters, model provenance, versions.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display
from traitlab import elicit, plots, runinfo
from traitlab.experiments import method_comparison as mc
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(mc.Params, globals())
sites = P.check()
lm = load_model(P.model, revision=P.revision, dtype=P.dtype, quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, lm))

# %% [markdown]
# ## Where the examples come from
# `source` (`traitlab.elicit`): `written` reads our prompts and written responses; `question` the
# prompt alone at its last token (the trait carried by the question); `generated` the model's own
# greedy answers to prompts that invite or avoid the trait, each pair kept only when a check
# (the refusal phrase rule, or the judge: positive answer ≥ `elicit_margin` points above its
# negative) says the answers show the intended polarity — the seed's natural elicitation.

# %%
# NBVAL_IGNORE_OUTPUT
sets, elicited = elicit.trait_sets(P, lm)

# %%
print(f"source: {P.source}")
if elicited:
    display(elicit.summary_table(elicited).round(1))
    display(elicit.examples(elicited))

# %% [markdown]
# ## Measurement
# One extraction per trait (all layers in one forward pass per batch, cached on disk), then
# every method fitted on every (trait, layer) cell.

# %%
# NBVAL_IGNORE_OUTPUT
acts = mc.extract_traits(P, lm, sites, sets)
results, scores = mc.run(P, acts, sites)
boot = mc.draws(P, scores)  # bootstrap over held-out pairs, within trait

# %%
print(f"model {lm.spec} ({lm.arch}, {lm.n_layers} layers, chat format: {lm.chat.name}); "
      f"{len(P.traits)} traits × {len(sites)} layers = {len(P.traits) * len(sites)} cells per method")
print({t: len(acts[t]["train"][sites[0]][0]) for t in P.traits}, "train pairs;",
      {t: len(acts[t]["val"][sites[0]][0]) for t in P.traits}, "val pairs")

# %% [markdown]
# ## Result: the method table
# `random` uses one seed here so that every method has the same number of cells; CIs are
# 95% percentile bootstraps over cells (cells share traits and neighbouring layers, so these
# intervals are optimistic).

# %%
summary = mc.summarize(results, P, boot)
display(summary.round(3))

# %% [markdown]
# ### Accuracy by layer, per method

# %%
fig = plots.accuracy_heatmaps(results[results.seed == P.seed], P.methods)

# %%
fig = plots.by_layer(results[results.seed == P.seed], "val_accuracy", "held-out accuracy")

# %% [markdown]
# ## Control: random directions as a null
# The same evaluation for `n_random_seeds` random directions per cell. Each seed gives one mean
# accuracy over all cells; the histogram is the distribution expected with no trait signal.

# %%
null = mc.random_null(results)
display(null.describe().loc[["mean", "std", "min", "max"]].round(3))
obs = {m: summary.loc[m, "mean_accuracy_pct"] for m in P.methods if m != "random"}
fig = plots.null_histogram(null.mean_accuracy_pct, obs, "mean held-out accuracy over cells (%)")

# %% [markdown]
# ## Few training pairs: where methods can differ
# With all training pairs every supervised method sits near the ceiling. Here each method is fitted
# on `curve_sizes` pairs per trait (`curve_repeats` seeded subsamples) at `curve_layers` (default:
# the middle layer) and scored on the full held-out split; the CI is over traits.

# %%
curve = mc.learning_curve(P, acts, sites)
curve_table = mc.curve_summary(curve)
display(curve_table.unstack("n_train")["accuracy_pct"].round(1))
fig = plots.learning_curve(curve)
print(mc.curve_conclusion(curve_table))

# %% [markdown]
# ## Control: what the words alone can do
# A bag-of-words logistic regression on the very texts the activations saw (the responses, for
# `position = "mean"`), fitted on the train split and scored on the held-out pairs like a direction
# (`traitlab.surface`). When it separates the classes as well as the methods do, this set cannot
# show that a direction reads more than the words.

# %%
surf = mc.surface(P, sets)
display(surf.round(3))

# %% [markdown]
# ## Comparison with the seed
# Failure counts are shown as a percentage of cells, since our grid differs in size.

# %%
display(mc.versus_seed(summary).round(2))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in mc.conclusions(summary, null, surf):
    print("•", line)

# %% [markdown]
# ## Result record
# The headline numbers with the tolerance each allows, and the seed's claims with verdicts
# (`traitlab.records`): written beside the report as `<report>.results.json` + CSV tables.

# %% tags=["record"]
from traitlab import records

record = mc.record(P, lm, results, summary, null, boot, surf, curve_table, elicited)
records.publish(record.with_run(**runinfo.run_record(P, lm)))
from traitlab import directions, vectors  # noqa: E402

vectors.publish_vectors(directions.fitted(), model=lm, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - Our model and prompt sets differ from the seed's (Gemma-2-2B-IT and its scenario files);
#   the table compares the *pattern*, not the exact numbers.
# - With `source: written` the responses are ours, read by the model (teacher forcing); the
#   `natural` profile (`source: generated`) uses the model's own answers, the `question` profile
#   the prompts alone.
# - The sign of every direction is fixed on training data (the seed's `pca_diff`, `ica` and
#   `random` appear to have kept an arbitrary sign, so their polarity failures sit near 50%).
# - The val split has about 22 pairs per trait, so a single cell's accuracy moves in steps of
#   about 2.3 points.
