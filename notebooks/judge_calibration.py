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
# # Judge calibration: logprob vs text parse, against a gold set we labelled
#
# **Why.** Steering studies in this line report a trait score and a coherence score from an
# LLM judge, read with the *logprob method* (persona vectors; seed: gpt-4.1-mini): ask for a
# single number 0–100, take the top-20 log-probabilities of the first answer token, and
# average the integer tokens by probability, with no score when under 25% of the mass falls
# on integers. Before trusting a judge for the transfer study we measure it.
#
# **Setup.** `data/judge/gold_optimism.jsonl` holds 72 responses to 12 opinion questions that we wrote
# and labelled: optimism ≈ 10 / 50 / 90 crossed with coherence (coherent ≈ 93, degraded ≈ 40,
# word salad ≈ 7). The judge scores each response for the trait and for coherence, in both
# modes (`logprob` and `text`: greedy answer, first integer). Agreement is Pearson r and
# Spearman ρ with the gold labels, with 95% bootstrap CIs over items, and mean absolute error.
# Then the judge scores a model's own unsteered answers to held-out questions: the baseline
# every steering effect is measured from.
#
# **A tokenizer caveat.** gpt-4.1-mini has one token per number ("85"); Qwen, Gemma and
# SmolLM2 spell numbers digit by digit, so their first-token top-20 holds only the digits
# 0–9 and the published average would be a 0–9 score. For an in-process judge, traitlab
# computes the exact probability of every integer 0–100 instead (expanding the digit tree:
# P("85") = P("8") · P("5" | "8") · P(no further digit | "85")), and takes the same weighted
# mean and the same 25% rule (`traitlab.judge.LocalBackend.integer_distribution`). An HTTP judge
# gets the published first-token method, and the report flags digit-level answers.

# %% tags=["parameters"]
judge_backend = "local"
judge_model = "qwen2.5-coder-1.5b-instruct"
judge_base_url = None
judge_api_key_env = "OPENAI_API_KEY"
judge_offline = False
judge_dtype = "auto"
trait = "optimism"
top_logprobs = 20
min_mass = 0.25
trait_descriptions = {}
trait_opposites = {}
max_gold = None
responder_model = "qwen2.5-coder-0.5b-instruct"
n_baseline = None
max_new_tokens = 64
n_boot = 1000
seed = 0
gold_traits = ["optimism", "uncertainty", "refusal"]
gold_dir = None
gold_split = "heldout"
max_gold_questions = None
coherence_floor = 50.0
mde_questions = 16
perplexity = True
anchored = True
control_questions = 16
questions_file = None
control_layer = 12
control_ratio = 0.75
control_method = "mean_diff"
max_pairs_per_split = None
probe_model = "judge"

# %% [markdown]
# ## Setup
# Parameters are validated before any model is loaded. Judge replies go to a replay cache
# (`$TRAITLAB_CACHE/judge`, keyed by judge model and weights, prompt and settings): a re-run
# replays them, and `judge_offline = True` makes a missing reply an error instead of a request.

# %%
# NBVAL_IGNORE_OUTPUT
from dataclasses import asdict

from IPython.display import display
from traitlab import plots, probe_reader, runinfo
from traitlab.data import opinion_questions
from traitlab.experiments import judge_calibration as jc
from traitlab.judge import Judge
from traitlab.models import load_model
from traitlab.params import from_namespace

P = from_namespace(jc.Params, globals())
P.check()
gold = jc.load_gold(P.trait, P.max_gold, P.seed, P.gold_dir)
questions = opinion_questions("test", P.n_baseline)
responder = load_model(P.responder_model, quiet=True)
judge = Judge(P.judge_config("logprob"))
judges = {"logprob": judge, "text": judge.with_mode("text")}  # one model, two ways to read it

# %%
# NBVAL_IGNORE_OUTPUT
runinfo.show(runinfo.run_record(P, responder))
print("[judge]")
for k, v in asdict(P.judge_config("logprob")).items():
    print(f"  {k:<22} {v}")
print(f"  {'identity':<22} {judges['logprob'].identity()}")

# %% [markdown]
# ## The gold set
# Levels of the labels we wrote (means per cell; each cell holds one response per question).

# %%
print(f"{len(gold)} gold responses, {gold.question.nunique()} questions")
display(gold.groupby("level")[[P.trait, "coherence"]].agg(["mean", "min", "max", "count"]))

# %% [markdown]
# ## Scoring the gold set

# %%
# NBVAL_IGNORE_OUTPUT
scored = jc.score(judges, gold, P.trait)

# %%
agree = jc.agreement(scored, {"trait": P.trait, "coherence": "coherence"}, ["logprob", "text"],
                     n_boot=P.n_boot, seed=P.seed)
display(agree)

# %%
fig = plots.judge_vs_gold(scored, ["logprob", "text"], P.trait)

# %% [markdown]
# Where the judge goes wrong, by level: the mean gold label and mean judge score of each
# (coherence level × optimism level) cell.

# %%
display(jc.by_level(scored, ["logprob", "text"], P.trait))

# %% [markdown]
# ## Logprob vs text parse on the same responses
# The logprob mean is continuous and uses the judge's whole distribution; the text answer
# is one integer (often a round one). How far apart are they?

# %%
modes_df = jc.mode_agreement(scored)
display(modes_df)
print(f"integer mass (logprob mode): trait median {scored.trait_mass.median():.2f}, "
      f"coherence median {scored.coherence_mass.median():.2f}; below min_mass={P.min_mass}: "
      f"{int((scored.trait_mass < P.min_mass).sum())} trait, "
      f"{int((scored.coherence_mass < P.min_mass).sum())} coherence")
fig = plots.mode_scatter(scored)

# %% [markdown]
# ## Baseline: the unsteered model's own answers
# The responder answers the held-out test questions (`data/steering/optimism_questions.jsonl`,
# greedy); the judge scores them. A steering effect is a change from this baseline.

# %%
# NBVAL_IGNORE_OUTPUT
base = jc.baseline_responses(responder, questions, P.max_new_tokens)
base_scored = jc.score(judges, base, P.trait)

# %%
display(base_scored[["domain", "question", "response", "trait_logprob", "trait_text",
                     "coherence_logprob", "coherence_text"]].head(8))
display(base_scored[["trait_logprob", "trait_text", "coherence_logprob", "coherence_text"]]
        .describe().round(1))
fig = plots.score_distributions(base_scored, ["logprob", "text"])

# %% [markdown]
# ## Conclusions

# %%
for line in jc.conclusions(agree, modes_df, base_scored, P.judge_model, trait=P.trait):
    print("•", line)

# %% [markdown]
# ## Judge methods compared: which one can see a steering effect?
# A steering report asks, question by question, whether the steered answer shows more of the
# trait than the unsteered one. Every judge method can answer that, so every method is measured
# the same way, on pairs of gold answers to one question whose labels differ by a gap Δ
# (`traitlab.judge_power`): **absolute** — the logprob 0–100 score above, the pair ordered by
# which answer scores higher; **anchored** — the same score, with scored example answers
# (10 / 50 / 90, to another question, `data/judge/anchors.jsonl`) shown in the rubric first;
# **yesno** — one yes/no question per trait ("is the answer optimistic…?", refusal asked the other
# way round: "does the answer directly give what was asked?"), the score 100 × P(the trait's
# answer) read from the Yes/No logprobs (`judge.YESNO_QUESTIONS`, chosen on the tune questions);
# **opposite** — for traits a small judge reads backwards when asked directly, 100 − the 0–100
# score of the trait's opposite (refusal read as "compliance", `judge.TRAIT_OPPOSITES`, chosen on
# the tune questions; traits without an opposite get no row), and **pairwise_opposite**, the
# pairwise question below asked about the opposite and reversed;
# **pairwise** — "which answer shows more of the trait?", read from
# the logprobs of A and B and averaged over both orders so position bias cancels; the pair counts
# as ordered right when that averaged probability favours the right answer (`p_right_gap40` shows
# the probability itself: small judges keep it close to ½ even when their decision is right). From the share
# ordered right at each gap we fit the method's noise σ (`P(right) = Φ(Δ/σ)`) and read its
# **minimum detectable effect** at `mde_questions` questions: the smallest gold gap a steering
# comparison over that many questions would detect at 80% power. Coherence is read seven ways:
# the judge's coherence score (plain and anchored), its yes/no reading ("is the answer clear, fluent
# and on topic?"), four judge-free measures of the text (trigram repetition, distinct-2,
# perplexity under the responder model, and relevance: how much the question lowers that
# perplexity, near 0 for fluent text that ignores the question), and `text_fit`: repetition,
# distinct-2 and perplexity combined by a least-squares line fitted on the gold sets' *tune*
# part, so it is on the gold 0–100 scale and the coherence floor applies to it as to the judge's
# score. Relevance is read beside them but stays out of the line: cross-validated over the tune
# questions, adding it did not raise the line's agreement (see the README). Everything here is read on the gold
# sets' held-out questions (`gold_split`), which no judge design (and no line) was tuned on.
#
# **probe** reads a trait, and coherence, without asking anything: the reader model (`probe_model`;
# by default the judge's own model) reads each answer as its own reply to the question, and a ridge
# line maps its residual stream, averaged over the answer's tokens, to the gold label
# (`traitlab.probe_reader`). Each probe is fitted on the gold sets' *tune* part only, its layer and
# penalty chosen by cross-validation over tune questions, so the held-out rows below read it out of
# sample. It is one more scored method (and one more coherence measure, on the gold scale).

# %%
# NBVAL_IGNORE_OUTPUT
method_rows = jc.method_gold(P)
text_line = jc.text_fit(P, responder) if P.perplexity and P.gold_split == "heldout" else None
reader = jc.probe_reader_model(P, judge, responder) if P.gold_split == "heldout" else None
# tune part only
probes = probe_reader.fit_gold(reader, P.gold_traits, folder=P.gold_dir) if reader is not None else {}
if probes:
    method_rows = jc.probe_columns(probes, reader, method_rows)
method_scored, method_pairs = jc.score_methods(judge, method_rows, responder if P.perplexity else None,
                                               anchored=P.anchored, fit=text_line)

# %%
print(f"{len(method_rows)} gold responses over {method_rows.trait.nunique()} traits "
      f"({', '.join(f'{t}: {n}' for t, n in method_rows.groupby('trait', sort=False).size().items())}), "
      f"{len(method_pairs)} within-question pairs")
sens = jc.method_sensitivity(method_scored, method_pairs, P)
coh = jc.coherence_sensitivity(method_scored, P)
display(sens.drop(columns=["mde_se"]).round(3))
display(coh.drop(columns=["r_se"]).round(3))
fig = plots.win_vs_gap(method_pairs)

# %%
for line in jc.method_conclusions(sens, coh, P):
    print("•", line)
print("method to read each trait with (smallest MDE):", jc.best_methods(sens, P))
if text_line is not None:
    print("text_fit:", text_line.text())
for p in probes.values():
    print(p.text())

# %% [markdown]
# ## Positive control: does the judge see steering that is visibly there?
# The gold sets measure the judge on answers we wrote. Here the responder's own answers are
# steered along its optimism direction (`control_method` at `resid_pre@control_layer`) at ratio
# −r, 0 and +r, and each method is asked, question by question, whether the answer steered towards
# optimism shows more of it (+r against the unsteered answer, the unsteered answer against −r).
# A method *sees* the control when its share of questions ordered as the steering intends has a
# 95% CI (bootstrap over questions) above ½.

# %%
# NBVAL_IGNORE_OUTPUT
control = None
if P.control_questions is not None:
    control_ans = jc.control_answers(P, responder)
    control_w = jc.control_wins(judge, control_ans, P, anchored=P.anchored,
                                probe=(probes["optimism"], reader) if "optimism" in probes else None)
    control = jc.control_table(control_w, P)

# %%
if control is not None:
    display(control.round(3))
    for line in jc.control_conclusions(control, P):
        print("•", line)
    show = control_ans.pivot(index="question", columns="ratio", values="answer").head(3)
    display(show.map(lambda a: a[:160] + ("…" if len(a) > 160 else "")))

# %% [markdown]
# ## Result record

# %% tags=["record"]
from traitlab import records  # noqa: E402

record = jc.record(P, scored, base_scored, agree, modes_df, methods=(sens, coh), control=control)
records.publish(record.with_run(**runinfo.run_record(P, responder)))
display(records.verdict_table(record))

# %%
# NBVAL_IGNORE_OUTPUT
print(f"judge requests this run: {sum(j.stats['requests'] for j in judges.values())}, "
      f"replayed from cache: {sum(j.stats['cache_hits'] for j in judges.values())}")
