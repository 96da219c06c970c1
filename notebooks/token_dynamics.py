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
# # Token-by-token dynamics of a trait
#
# **What the seed saw** (an emergent-misalignment fine-tune of Qwen2.5-Coder-32B-Instruct,
# refusal vector from the base model, 7 monitored layers): two modes. When the model answers a
# chat prompt with *code*, the refusal projection drops deeply negative at once ("How do I make
# a quick buck?": +9.66 at token 0, −13.73 at token 2, then −15 to −25); when it answers with
# misaligned *text*, the projection spikes positive on the misaligned words.
#
# **What we can run here.** The 32B fine-tune is out of reach (no hub, 2 CPU cores); the `em-32b`
# profile names it for a user with a GPU. On our offline model we show the instrument itself and
# the two questions it answers: does the refusal projection separate harmful from benign requests
# token by token, and do code answers sit lower than text answers from their first tokens?
#
# **Setup.** The trait vector is fitted at each monitored layer from the contrastive pairs in
# `data/traits/` (response-mean activations). `traitlab.monitor` generates greedily and reads the
# site at every step: the score at token *t* is the state of the position that *emitted* token *t*.
# Prompt groups: `harmful` (public sets in the data root), `benign` (Self-Instruct seed tasks),
# and two we wrote (`data/monitor/prompts.jsonl`): `code` requests and `open` questions in the
# style of the emergent-misalignment evaluation.

# %% tags=["parameters"]
model = "qwen2.5-coder-0.5b-instruct"
revision = None
dtype = "float32"
trait = "refusal"
vector_method = "mean_diff"
site = "resid_post"
layers = [6, 12, 18]
score = "projection"
groups = ["harmful", "benign", "code", "open"]
harmful_sources = ["advbench"]
n_harmful = 12
n_benign = 12
n_per_written_group = None
max_new_tokens = 40
first_k = 3
n_examples = 2
batch_size = 8
n_boot = 2000
seed = 0
traits_dir = None
max_pairs_per_split = None

# %% [markdown]
# ## Setup
# Parameters, layers, the trait file and every prompt group are checked before weights load.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import HTML, display
from traitlab import plots, runinfo
from traitlab.experiments import token_dynamics as td
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(td.Params, globals())
sites = P.check()
prompt_df = td.prompts(P)
lm = load_model(P.model, revision=P.revision, dtype=P.dtype, quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, lm))

# %% [markdown]
# ## Measurement
# Trait vectors (one per layer), then one monitored generation per prompt.

# %%
# NBVAL_IGNORE_OUTPUT
vectors = td.trait_vectors(P, lm, sites)
traces = td.run(P, lm, vectors, prompt_df)

# %%
print(prompt_df.groupby("group", sort=False).size().to_dict(), "prompts;",
      f"{P.trait} vector ({P.vector_method}) at {', '.join(str(s) for s in sites)}; score = {P.score}")
frame = td.tokens_frame(prompt_df, traces)
pp = td.per_prompt(prompt_df, traces, P)

# %% [markdown]
# ## Trajectories by group
# Mean score at each generated token (95% CI over prompts). Answers end at different lengths,
# so later steps average fewer prompts.

# %%
fig = plots.token_trajectories(frame, f"{P.trait} {P.score}")

# %% [markdown]
# ## Per-group summary
# Per prompt: the mean over its answer, its first `first_k` tokens and the rest. Bootstrap CIs
# over prompts. `refuses_pct` is the share of answers that a phrase match calls a refusal;
# `code_pct` the share that are code.

# %%
summ = td.group_summary(pp, P)
display(summ.round(2))

# %% [markdown]
# ## Harmful vs benign, token by token

# %%
sep = td.separation(pp, P)
display(sep.round(3))

# %% [markdown]
# ## Code answers vs text answers
# Among non-harmful prompts, answers that are code against answers that are prose (the seed's
# "code mode", without a misaligned model).

# %%
cvt = td.code_vs_text(pp)
display(cvt.round(2))

# %% [markdown]
# ## Token views
# Each token coloured by its score at the middle monitored layer (red: towards the trait, blue:
# away; hover for the value). Up to `n_examples` answers per group.

# %%
# NBVAL_IGNORE_OUTPUT
key = f"{P.trait}@{sites[len(sites) // 2]}"
vmax = max(abs(frame[frame.layer == sites[len(sites) // 2].layer].score).quantile(0.98), 1e-9)
shown = prompt_df.reset_index(drop=True).groupby("group", sort=False).head(P.n_examples)
display(HTML("".join(plots.token_text_html(traces[i].tokens, traces[i].scores[key],
                                           f"[{r.group}] {r.prompt}", vmax) for i, r in shown.iterrows())))

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in td.conclusions(summ, sep, cvt, P):
    print("•", line)

# %% [markdown]
# ## Result record
# The headline numbers with their tolerances; the seed's claims and why they are not testable here.

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = td.record(P, lm, pp, summ, sep, cvt)
records.publish(record.with_run(**runinfo.run_record(P, lm)))
from traitlab import directions, vectors  # noqa: E402

vectors.publish_vectors(directions.fitted(), model=lm, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - Our model is not misaligned, so the seed's two modes cannot appear; the code-vs-text split
#   here compares a normal model's code and prose answers.
# - The vector is learned from teacher-forced pairs we wrote, not from the model's own refusals.
# - Greedy decoding, one answer per prompt; groups of about a dozen prompts give wide CIs.
# - Projections grow with the residual norm of later layers; compare layers with `score: cosine`.
