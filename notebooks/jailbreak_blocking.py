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
# vector added at every position, prompt and answer): none, one layer, an ensemble of layers,
# and a random direction at the same strength. Strength is a perturbation ratio: coefficient =
# ratio × the site's mean activation norm. A refusal is a phrase match in the answer's opening.
# The same conditions on harmless requests measure the price: over-refusal.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
harmful_sources = ["advbench", "harmbench_test", "jailbreakbench"]
n_requests = 12
n_direction = 32
n_benign = 16
wrappers = None
site = "attn_out"
single_layers = [12]
ratio = 1.0
ensemble_layers = [10, 12, 14]
ensemble_ratio = 0.5
random_seed = 1
max_new_tokens = 40
batch_size = 16
seed = 0

# %% [markdown]
# ## Setup
# Parameters, layers, the wrapper file and the data root are checked before weights load.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display
from traitlab import runinfo
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

# %%
print(f"{prompts.attacks.request_id.nunique()} requests × ({len(jb.wrappers(P))} wrappers + plain) = "
      f"{len(prompts.attacks)} attack prompts, {len(prompts.benign)} benign; conditions: {P.conditions()}")

# %% [markdown]
# ## Refusal rate (%) by attack kind and condition

# %%
tab = jb.table(answers, P)
display(tab)

# %%
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

fig, ax = plt.subplots(figsize=(1.6 * len(tab.columns) + 2, 0.45 * len(tab) + 1.2), constrained_layout=True)
sns.heatmap(tab, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="rocket_r", ax=ax, cbar_kws={"label": "refusal %"})
ax.set_xlabel("condition")
ax.set_ylabel("")

# %% [markdown]
# ## Jailbreaks blocked, and the price
# "Blocked" follows the seed: among the wrapped prompts that the unsteered model answered, the
# share refused under the condition (Wilson 95% intervals). The benign column is over-refusal.

# %%
blk = jb.blocked(answers, P)
display(blk)

# %% [markdown]
# ### Example answers (first request, each wrapper kind)

# %%
# NBVAL_IGNORE_OUTPUT
ex = answers[(answers.request_id == 0) | (answers.set == "benign")].groupby(["kind", "condition"], sort=False).head(1)
with __import__("pandas").option_context("display.max_colwidth", 120):
    display(ex.pivot(index="kind", columns="condition", values="answer"))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in jb.conclusions(tab, blk, P):
    print("•", line)

# %% [markdown]
# ## Result record
# The headline numbers with their tolerances, and the seed's claims by one verdict rule.

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = jb.record(P, lm, answers, tab, blk)
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
# - With about a dozen requests per wrapper kind the Wilson intervals are wide.
