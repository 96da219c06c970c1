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
# *Instruction*: the model answers neutral questions under `n_system_prompts` paraphrased
# positive and negative system prompts (`data/elicitation/instructions.jsonl`; sycophancy
# questions in `data/elicitation/sycophancy_questions.jsonl`, both written by us); `method` on the
# response-mean activations of its own answers.
#
# **Reading the trait.** Every answer's trait is read on a 0–100 scale by `reading`: `probe` (the
# default) asks the judge nothing and reads the judge model's activations with a probe fitted on
# the trait's gold answers; `absolute` is the judge's logprob score, as the seed. On held-out gold
# (judge-calibration report, the 0.5B judge) the probe sees the smallest effects on sycophancy
# and ties the judge's score on optimism.
#
# **Order of the checks.** (1) Do the instructions change the answers, as the reader sees them?
# If not, the instruction vector has nothing to capture and the reader cannot see the trait: every
# steering null below is then inconclusive. (2) Per layer: cosine with a bootstrap interval, and
# cross-projection (each vector on the other source's held-out examples) with Wilson intervals.
# (3) Steering on the test questions with no system prompt, each delta with a t-interval over
# questions and its minimum detectable effect.

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
n_system_prompts = 5
n_instruction_questions = 10
n_test_questions = 20
max_new_tokens = 40
reading = "probe"
judge_backend = "local"
judge_model = "qwen2.5-coder-0.5b-instruct"
judge_base_url = None
judge_api_key_env = "OPENAI_API_KEY"
judge_offline = False
judge_dtype = "auto"
min_mass = 0.25
gold_dir = None
trait_descriptions = {}
trait_opposites = {}
batch_size = 16
n_boot = 1000
seed = 0
traits_dir = None
max_pairs_per_split = None
questions_file = None
instructions_file = None

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
judge = P.judge()
vecs = {t: el.trait_vectors(P, lm, t, sites) for t in P.traits}
instructed = el.judge_instructed(judge, vecs, P.reading)
steered = el.judge_steered(judge, pd.concat([el.steer(P, lm, t, vecs[t]) for t in P.traits], ignore_index=True),
                           P.reading)
cosines = {t: el.cosine_bootstrap(P, vecs[t]) for t in P.traits}
res = el.Results(vecs, cosines, pd.concat([el.compare(t, vecs[t], cosines[t]) for t in P.traits]), instructed, steered)
record = el.record(P, res)

# %% [markdown]
# ## 1. Do the instructions change the answers?
# The trait reading (`reading`) of the answers to the test questions under the positive and the
# negative system prompts (question i under paraphrase i mod `n_system_prompts`), the difference
# paired by question with its 95% t-interval and minimum detectable effect (MDE, 80% power); and
# how much the instructions changed the text: `same`, the share of question pairs whose two
# answers have the same words, and `similarity`, their mean word similarity (1 = unchanged). A
# difference the reader cannot see with most pairs alike is a model that ignored the instructions.

# %%
display(res.instructed_effect.drop(columns="similarity_se", errors="ignore").round(2))

# %%
# NBVAL_IGNORE_OUTPUT
with pd.option_context("display.max_colwidth", 160):
    for t in P.traits:
        a = res.instructed[res.instructed.trait == t]
        display(a.groupby("polarity").head(2)[["polarity", "prompt", "question", "answer", "score"]])

# %% [markdown]
# ## 2. Similarity and cross-projection by layer
# Cosine with a bootstrap 95% interval (natural pairs and instruction questions resampled, both
# vectors refitted). Accuracy (%) of each vector (the name's prefix) on each source's held-out
# examples (suffix): natural val pairs, and the instructed answers to the test questions.

# %%
cmp = res.comparison
display(cmp[[c for c in cmp.columns if not c.endswith(("_n", "_auroc"))]].round(2))

# %%
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 1 + len(P.traits), figsize=(4.2 * (1 + len(P.traits)), 3.4), constrained_layout=True)
for k, (t, g) in enumerate(cmp.groupby(level="trait", sort=False)):
    g = g.droplevel("trait")
    axes[0].errorbar(g.index, g.cosine, yerr=[g.cosine - g.cosine_lo, g.cosine_hi - g.cosine], marker="o",
                     capsize=3, color=f"C{k}", label=t)
    for j, (v, d) in enumerate(el.CROSS):
        axes[1 + k].errorbar(g.index + 0.15 * (j - 1.5), g[f"{v}_on_{d}_acc"],
                             yerr=[g[f"{v}_on_{d}_acc"] - g[f"{v}_on_{d}_lo"], g[f"{v}_on_{d}_hi"] - g[f"{v}_on_{d}_acc"]],
                             marker="o", ms=3, capsize=2, color=f"C{j}", label=f"{v} on {d}")
    axes[1 + k].axhline(50, color="grey", lw=0.8, ls=":")
    axes[1 + k].set(title=f"{t}: held-out accuracy (%)", xlabel="layer", ylim=(0, 102))
axes[0].set(title="cosine(natural, instruction)", xlabel="layer")
axes[0].legend(fontsize=8)
axes[-1].legend(fontsize=7)

# %%
display(el.cross_projection(cmp).round(1))

# %% [markdown]
# ## 3. Steering effect of each vector
# Delta = steered minus unsteered trait reading on the same question (95% t-interval over
# questions, MDE at 80% power); `steers` when the interval lies above 0.

# %%
eff = res.steering
display(eff.drop(columns="delta_ci95").round(2))

# %%
fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
e = eff.reset_index()
labels = [f"{r.trait}\n{r.vector} L{r.layer}" for r in e.itertuples()]
ax.errorbar(range(len(e)), e.delta, yerr=[e.delta - e.ci_lo, e.ci_hi - e.delta], fmt="o", capsize=3)
ins = res.instructed_effect
for t, r in ins.iterrows():
    xs = [i for i, x in enumerate(e.trait) if x == t]
    ax.hlines(r.delta, min(xs) - 0.4, max(xs) + 0.4, color="C2", ls="--", lw=1,
              label="instructed difference" if t == ins.index[0] else None)
ax.axhline(0, color="grey", lw=0.8)
ax.set_xticks(range(len(e)), labels, fontsize=7)
ax.set_ylabel(f"delta ({P.reading} reading, points)")
_ = ax.legend(fontsize=8)

# %%
# NBVAL_IGNORE_OUTPUT
with pd.option_context("display.max_colwidth", 140):
    first = steered.groupby(["trait", "vector", "layer"], sort=False).head(1)
    display(first[["trait", "vector", "layer", "question", "answer", "score"]])

# %% [markdown]
# ## Comparison with the seed

# %%
vs = res.versus_seed
display(vs.round(3))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in el.conclusions(vs, eff):
    print("•", line)

# %% [markdown]
# ## Result record

# %% tags=["record"]
from traitlab import directions, records, vectors  # noqa: E402

records.publish(record.with_run(**runinfo.run_record(P, lm)))
vectors.publish_vectors(directions.fitted(), model=lm, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - Both traits have gold sets, and judge_calibration measures each reading on their held-out
#   questions; the probe is fitted on short written answers, and the instructed difference in
#   section 1 checks that it also sees the model's own answers.
# - One perturbation ratio at two layers, not a coefficient search: "does not steer" means "not at
#   this ratio and these layers".
# - The cross-projection layer is the best of the grid, picked after the fact (as the seed reports
#   its best); the held-out threshold is the midpoint of the evaluated set's class means.
# - The instruction vector is fitted on generated answers; its cosine interval covers the draw of
#   questions and pairs, not other instructions.
