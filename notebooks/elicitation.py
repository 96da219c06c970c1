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
# # Natural vs instruction-based elicitation
#
# **Claims under test** (seed, Qwen2.5-7B-Instruct): for a cognitive trait (optimism) a vector from
# natural contrasting scenarios and one from system-prompt instructions ("You are an optimistic
# assistant" vs the opposite) are similar (cosine 0.63) and both steer; for a behavioural trait
# (sycophancy) they differ (cosine 0.20), and the natural vector detects (84%) but does not steer.
#
# **Setup.** *Natural*: `method` on our contrastive pairs (written responses read by the model).
# *Instruction*: the model answers neutral questions under a positive and a negative system
# prompt (`data/elicitation/instructions.jsonl`; sycophancy questions in
# `data/elicitation/sycophancy_questions.jsonl`, both written by us); `method` on the
# response-mean activations of its own answers. Compared per layer: cosine; cross-projection
# (each vector on the other source's held-out examples); and steering on the test questions with
# no system prompt, trait scored by the judge.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
traits = ["optimism", "sycophancy"]
method = "mean_diff"
site = "resid_pre"
layers = [4, 8, 12, 16, 20]
steer_layers = [8, 12]
ratio = 0.75
n_instruction_questions = 10
n_test_questions = 6
max_new_tokens = 40
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
import pandas as pd
from IPython.display import display
from traitlab import runinfo
from traitlab.experiments import elicitation as el
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(el.Params, globals())
sites = P.check()
lm = load_model(P.model, revision=P.revision, dtype=P.dtype, quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, lm))
print(P.judge().config)

# %% [markdown]
# ## Measurement

# %%
# NBVAL_IGNORE_OUTPUT
vecs = {t: el.trait_vectors(P, lm, t, sites) for t in P.traits}
answers = pd.concat([el.steer(P, lm, t, vecs[t]) for t in P.traits], ignore_index=True)
judged = el.judge_steered(P.judge(), answers)

# %% [markdown]
# ### The instructed answers (first train question per trait and polarity)

# %%
# NBVAL_IGNORE_OUTPUT
with pd.option_context("display.max_colwidth", 160):
    for t in P.traits:
        a = vecs[t].instruction_answers
        display(a[a.split == "train"].groupby("polarity").head(1)[["polarity", "question", "answer"]])

# %% [markdown]
# ## Similarity and cross-projection by layer
# Accuracy (%) of each vector (rows' prefix) on each source's held-out examples (suffix):
# natural val pairs, and the instructed answers to the test questions.

# %%
cmp = pd.concat([el.compare(t, vecs[t]) for t in P.traits])
display(cmp.round(3))

# %%
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), constrained_layout=True)
c = cmp.reset_index()
sns.lineplot(c, x="layer", y="cosine", hue="trait", marker="o", ax=axes[0])
axes[0].set_title("cosine(natural, instruction)")
long = c.melt(id_vars=["trait", "layer"], value_vars=[k for k in c.columns if k.endswith("_acc")],
              var_name="vector_on_data", value_name="accuracy")
sns.lineplot(long, x="layer", y="accuracy", hue="vector_on_data", style="trait", ax=axes[1])
axes[1].set_title("held-out accuracy (%)")
axes[1].legend(fontsize=7)

# %% [markdown]
# ## Steering effect of each vector
# Delta = steered minus unsteered judge score on the same question (95% t-interval over
# questions); `steers` when the interval lies above 0.

# %%
eff = el.steering_effect(judged)
display(eff.round(2))

# %% [markdown]
# ## Comparison with the seed

# %%
vs = el.versus_seed(cmp, eff)
display(vs.round(3))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in el.conclusions(vs, eff):
    print("•", line)

# %% [markdown]
# ## Result record

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = el.record(P, vecs, cmp, judged, eff, vs)
records.publish(record.with_run(**runinfo.run_record(P, lm)))
from traitlab import directions, vectors  # noqa: E402

vectors.publish_vectors(directions.fitted(), model=lm, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - A handful of test questions per trait: steering intervals are wide.
# - The judge's trait calibration was measured for optimism only (judge_calibration); sycophancy
#   scores from a small local judge are unvalidated.
# - One perturbation ratio at two layers, not a coefficient search.
