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
# # Base → instruct detection transfer
#
# **Claim under test** (seed, Gemma-2-2B): a refusal vector extracted from the *base* model
# (probe, `attn_out`, layer 8) detects refusal in the instruction-tuned model: about 0.5
# separation in response means between harmful and benign requests, ~90% accuracy. The seed reads
# this as "safety concepts exist before alignment".
#
# **Our analogue.** No base/instruct pair of one family ships offline, so we use the chain that
# `model_chain` builds (Gemma-3-270M base → SFT → DPO, 2 CPU cores; small and weakly tuned, see
# that report), and, as a second view, the instruct Qwen read without and with its chat template
# (its refusals are template-gated). The vector is fitted on the base model (plain prompt format)
# from our contrastive pairs; each model then answers harmful and benign requests while we project
# its own activations onto the base vector at every generated token.

# %% tags=["parameters"]
chain_profile = "default"
models = None
trait = "refusal"
method = "probe"
site = "attn_out"
layers = [4, 8, 12]
template_model = "qwen2.5-coder-0.5b-instruct"
template_layers = [8, 12, 16]
harmful_sources = ["advbench"]
n_harmful = 16
n_benign = 16
max_new_tokens = 32
batch_size = 8
n_boot = 2000
seed = 0
traits_dir = None
max_pairs_per_split = None
claim_layer = None
n_random = 0
steer_ratios = []
steer_claim_ratio = None
steer_random = 0

# %% [markdown]
# ## Setup
# Parameters, layers of every model, the trait file and the data root are checked first; the
# chain is built (or reused from the cache) with its own profile.

# %%
# NBVAL_IGNORE_OUTPUT
import pandas as pd
from IPython.display import display
from traitlab import plots, runinfo
from traitlab.chat import ChatFormat
from traitlab.experiments import base_to_instruct as bi
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(bi.Params, globals())
P.check()
req = bi.requests(P)
specs = bi.chain_models(P)
base = load_model(specs["base"], quiet=True)

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, base))
print(specs)

# %% [markdown]
# ## Measurement: the chain
# Vector from the base model; every model of the chain read with it.

# %%
# NBVAL_IGNORE_OUTPUT
vectors = bi.base_vectors(P, base, ChatFormat.plain(base.tokenizer), P.layers)
pp, traj, steer = [], [], []
for name, spec in specs.items():
    m = base if name == "base" else load_model(spec, quiet=True)
    traces = bi.read(P, m, ChatFormat.plain(m.tokenizer), vectors, req)
    pp.append(bi.per_prompt(name, req, traces))
    traj.append(bi.trajectories(name, req, traces))
    if P.steer_ratios:  # the same base vector added to this model: detection vs control
        steer.append(bi.steering_strength(P, m, ChatFormat.plain(m.tokenizer), vectors, req, name))
steer = pd.concat(steer, ignore_index=True) if steer else None

# %% [markdown]
# ## Measurement: one instruct model, without and with its chat template

# %%
# NBVAL_IGNORE_OUTPUT
if P.template_model:
    q = load_model(P.template_model, quiet=True)
    qv = bi.base_vectors(P, q, ChatFormat.plain(q.tokenizer), P.template_layers)
    for mode, fmt in (("no template", ChatFormat.plain(q.tokenizer)), ("chat template", q.chat)):
        traces = bi.read(P, q, fmt, qv, req)
        pp.append(bi.per_prompt(f"instruct, {mode}", req, traces))
        traj.append(bi.trajectories(f"instruct, {mode}", req, traces))
pp, traj = pd.concat(pp, ignore_index=True), pd.concat(traj, ignore_index=True)

# %%
print(req.group.value_counts().to_dict(), "requests;", f"{P.trait} vector ({P.method}) at {P.site}",
      f"layers {P.layers} (chain), {P.template_layers} ({P.template_model})")

# %% [markdown]
# ## Result: detection by model and layer
# Separation = harmful − benign mean projection over the answer (bootstrap CI over prompts);
# `separation_sd` in pooled standard deviations; AUROC is threshold-free; the midpoint accuracy
# uses a threshold between the two group means (in-sample, optimistic). Refusal rates are by
# phrase match on the same answers.

# %%
det = bi.detection(pp, P)
display(det.round(3))

# %% [markdown]
# ## Controls: random directions, and refusal apart from the request
# `n_random` random unit directions per layer are read on the same answers; their AUROCs (folded
# to ≥ 0.5: a random direction has no sign) are what chance gives at this n. Refused vs complied
# compares, among the *harmful* requests only, the answers the model refused with those it
# complied with: the vector reading the model's behaviour rather than the request's content
# (`refusal_auroc` in the table above; NaN when either kind has fewer than 4 answers).

# %%
null = bi.null_aurocs(pp, P)
if len(null):
    display(null.round(3))
else:
    print("no random directions (n_random = 0)")

# %% [markdown]
# ## Detection vs control: does the base vector steer the tuned models as it steers the base?
# The seed found the base vector detects in the instruct model (95%) but steers it ~3× more
# weakly. Each model gets the base vector added at `site@claim_layer`, ± each ratio × that
# model's own mean activation norm there, at every position; we read the refusal log-odds at the
# first answer token (refusal openings vs the rest). **Specific** = half the difference between
# +v and −v, the part of the shift that follows the direction; **common** = what both signs do
# alike (a model's response to any push of that size). Random directions (×) are the specific
# shift's null. Intervals are over prompts.

# %%
if steer is not None:
    steer_summary = bi.steering_summary(steer)
    display(steer_summary.round(3))
    fig = plots.steering_strength(steer_summary, P.trait)
else:
    print("no steering (steer_ratios is empty)")

# %% [markdown]
# ## Trajectories over the answer

# %%
fig = plots.trajectory_grid(traj, f"{P.trait} projection")

# %% [markdown]
# ## Conclusions (computed from this run)

# %%
for line in bi.conclusions(det, P, null):
    print("•", line)

# %% [markdown]
# ## Result record
# The headline numbers with their tolerances, and the seed's claim checked by one verdict rule.

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = bi.record(P, base, det, pp, null, steer)
records.publish(record.with_run(**runinfo.run_record(P, base)))
from traitlab import directions, vectors  # noqa: E402

vectors.publish_vectors(directions.fitted(), model=base, params=P)  # the vectors this report used
display(records.verdict_table(record))

# %% [markdown]
# ## Caveats
# - Our SFT/DPO models are a few hundred CPU training steps on a 270M base, not an alignment
#   pipeline. The default chain never learns to refuse (its instructions are all benign), so there
#   "detecting refusal" means separating harmful from benign *requests*; the `refusing` profile
#   reads a chain whose SFT data include the teacher's refusals of StrongREJECT requests, and
#   separates refused from complied answers among the harmful requests.
# - The vector comes from teacher-forced pairs we wrote, read at response positions.
# - The seed's raw separation (≈0.5) is on its own projection scale; AUROC and accuracy compare.
# - Steering strength is read from the first answer token's refusal log-odds, not from generated
#   behaviour; the ratios (and the claim ratio) were set after an exploratory run looked at
#   0.25–2, so every ratio is tabulated and the verdict should read the same across them.
