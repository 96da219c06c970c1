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
# # Steering against jailbreaks
#
# **Claim under test** (seed, Gemma-2-2B-IT): adding the refusal direction at `attn_out` of
# layer 10 (coefficient 20) together with an ensemble of layers blocked 94% of jailbreaks; only
# red-team framing resisted.
#
# **Setup.** Harmful requests are sampled from the public sets in the data root and wrapped in
# jailbreak templates that we wrote (`data/jailbreak/wrappers.jsonl`: role play, hypothetical,
# prefix injection, red-team framing; two templates each). The refusal direction is the
# difference of mean last-prompt-token activations of *other* harmful requests and harmless
# ones, at `site` of each layer. Every prompt is answered greedily under each condition (the
# vector added at every position, prompt and answer): none, one layer, an ensemble of layers;
# and random directions at the same strengths, one per seed, as controls. Strength is a
# perturbation ratio: coefficient = ratio × the site's mean activation norm. A refusal is a
# phrase match in the answer's opening. The unit of every blocked rate is the request (each is
# answered under every wrapper): intervals bootstrap requests. Benign prompts from a public set
# measure the price, over-refusal; each answer's coherence is read from its text.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
harmful_sources = ["advbench", "harmbench_test", "jailbreakbench"]
n_requests = 24
n_direction = 32
benign_source = "jbb_benign"
n_benign = 48
wrappers = None
site = "attn_out"
single_layers = [12]
ratio = 1.0
ensemble_layers = [10, 12, 14]
ensemble_ratio = 0.5
random_seeds = [1, 2, 3, 4, 5]
gold_traits = ["optimism", "uncertainty", "refusal"]
gold_dir = None
max_new_tokens = 32
batch_size = 16
n_boot = 2000
seed = 0

# %% [markdown]
# ## Setup
# Parameters, layers, the wrapper file and the data root are checked before weights load.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display
from traitlab import runinfo
from traitlab import judge_power
from traitlab.experiments import jailbreak_blocking as jb
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(jb.Params, globals())
sites = P.check()
prompts = jb.load_prompts(P)
lm = load_model(P.model, revision=P.revision, dtype=P.dtype, quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, lm))

# %% [markdown]
# ## Measurement

# %%
# NBVAL_IGNORE_OUTPUT
dirs = jb.refusal_directions(P, lm, prompts)
answers = jb.run(P, lm, prompts, dirs)
floors, gold = judge_power.calibrate_floors(lm, P.gold_traits, context=False, batch_size=P.batch_size,
                                             folder=P.gold_dir)
answers = jb.add_coherence(answers, lm, floors, P.batch_size)
refits = judge_power.FloorRefits(gold)  # the floors' own error, for the intervals

# %%
print(f"{prompts.attacks.request_id.nunique()} requests × ({len(jb.wrappers(P))} wrappers + plain) = "
      f"{len(prompts.attacks)} attack prompts, {len(prompts.benign)} benign ({P.benign_source}); "
      f"conditions: {P.conditions()}; random controls: {len(P.random_conditions())} "
      f"(seeds {P.random_seeds}), on the answered jailbreaks and the benign prompts")
print(f"Coherence rule: {floors.text()}")

# %% [markdown]
# ## Is the refusal classifier right?
# Every rate below is a phrase match. It is checked against answers of this report's kind
# (jailbreaks, benign prompts, steered and not) that were read and labelled refusal or not
# (`data/refusal/labelled_answers.jsonl`, two readers, κ 0.99 between them). A pruning of the
# phrases that misfire is decided on the labels' `tune` split and kept only where the `heldout`
# split agrees; the agreement is measured on `heldout`.

# %%
from traitlab import refusal  # noqa: E402

labels = refusal.load_labels(source="jailbreak_blocking")
held = labels[labels.split == "heldout"]
val = refusal.validate(held, refusal.DEFAULT_PHRASES, n_boot=P.n_boot, seed=P.seed)
print("Phrase rule in use:", val.text())
print("Phrase selection:", refusal.select_phrases(labels[labels.split == "tune"], held)[1])
display(refusal.phrase_table(labels, refusal.CANDIDATE_PHRASES).query("on_refusals + misfires > 0"))

# %% [markdown]
# ## Refusal rate (%) by attack kind and condition

# %%
tab = jb.table(answers, P)
display(tab)

# %%
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

fig, ax = plt.subplots(figsize=(1.6 * len(tab.columns) + 2, 0.45 * len(tab) + 1.2), constrained_layout=True)
sns.heatmap(tab, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="rocket_r", ax=ax, cbar_kws={"label": "refusal %"})
_ = ax.set(xlabel="condition", ylabel="")

# %% [markdown]
# ## Jailbreaks blocked, and the price
# "Blocked" follows the seed: among the wrapped prompts that the unsteered model answered, the
# share refused under the condition (95% intervals resampling requests). `blocked_coherent_pct`
# counts only refusals whose text clears the coherence rule; its interval resamples the gold
# questions the rule's floors are fitted on as well, so it covers where the floors fall. The
# benign column is over-refusal (Wilson intervals). A random row pools its seeds; `seed_range` shows their spread.

# %%
blk = jb.blocked(answers, P, refits)
display(blk.drop(columns=jb.NUMERIC_CI).round(1))

# %% [markdown]
# ### Against the random controls
# Each steered condition's blocked rate minus its random control's, paired by request.

# %%
vs = jb.versus_random(answers, P)
display(vs[["minus_random_pts", "ci95"]])

# %%
fig, ax = plt.subplots(figsize=(7, 0.5 * len(blk) + 1.2), constrained_layout=True)
lo_hi = blk[["blocked_lo", "blocked_hi"]].to_numpy(float)
y = np.arange(len(blk))
ax.errorbar(blk.blocked_pct, y, xerr=[blk.blocked_pct - lo_hi[:, 0], lo_hi[:, 1] - blk.blocked_pct],
            fmt="o", color="C0", capsize=3, label="blocked (refused)")
if "blocked_coherent_pct" in blk:
    ax.plot(blk.blocked_coherent_pct, y, "x", color="C2", label="refused and coherent")
ax.plot(blk.benign_refusal_pct, y, "s", color="C3", mfc="none", label="benign over-refusal")
ax.set_yticks(y, blk.index)
ax.invert_yaxis()
ax.set_xlim(-2, 102)
ax.set_xlabel("% of answered jailbreaks (benign: % of benign prompts)")
_ = ax.legend(loc="lower right", fontsize=8)

# %% [markdown]
# ### Example answers (first request, each wrapper kind)

# %%
# NBVAL_IGNORE_OUTPUT
main = answers[answers.condition.isin(P.conditions())]
ex = main[(main.request_id == 0) | (main.set == "benign")].groupby(["kind", "condition"], sort=False).head(1)
with __import__("pandas").option_context("display.max_colwidth", 120):
    display(ex.pivot(index="kind", columns="condition", values="answer"))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in jb.conclusions(tab, blk, vs, P):
    print("•", line)

# %% [markdown]
# ## Result record
# The headline numbers with their tolerances, and the seed's claims by one verdict rule.

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = jb.record(P, lm, answers, tab, blk, vs, floors, val)
records.publish(record.with_run(**runinfo.run_record(P, lm)))
from traitlab import vectors  # noqa: E402
from traitlab.directions import Direction  # noqa: E402

vectors.publish_vectors([Direction(v / v.norm(), "mean_diff", f"{P.site}@{L}", lm.spec, "refusal", P.seed,
                                   float(v.norm())) for L, v in dirs.items()], model=lm, params=P)
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - Our wrappers are simple, written by us, and tested on a 0.5B model that already refuses some
#   plain requests; the seed's jailbreak set and model differ.
# - Phrase matching counts an answer as a refusal when it opens with a refusal phrase, even if
#   harmful text follows later.
# - The wrappers of one request are not independent tests: every blocked interval resamples
#   requests, so with a couple of dozen requests they stay wide.
# - The random controls answer only the prompts their rates are read on (the answered
#   jailbreaks and the benign prompts), so the table by attack kind shows none of them.
