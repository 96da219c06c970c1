"""The surface baseline: how well the words alone separate a trait's two classes.

A detection table where every activation method scores ~100% says little until it is set
beside what a reader of the text could do without the model: if a bag-of-words classifier
also separates the held-out pairs, the task is carried by the words, and "the probe reads
the trait" is not shown by it. So every detection report puts this row beside its methods.

The classifier is the simplest honest one: binary unigram + bigram presence
(``CountVectorizer``), L2 logistic regression (``C`` fixed, no tuning on the evaluated pairs),
fitted on the train split's texts. Its held-out scores (the decision function) are summarised
exactly as a direction's cosine scores are (``traitlab.metrics``): midpoint accuracy,
polarity, Cohen's d and AUROC, so the row compares like for like.

The texts are what the activations saw: the response for ``position="mean"`` (the mean over
response tokens), prompt and response for ``"last"`` and ``"all"``.

Example:
    >>> pos = ["what a bright hopeful day", "great things ahead", "a wonderful chance"]
    >>> neg = ["a grim hopeless day", "bad things ahead", "a terrible loss"]
    >>> ps, ns = bag_of_words_scores(pos[:2], neg[:2], pos[2:], neg[2:])
    >>> len(ps), len(ns)
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .data import TraitDataset, TraitPair
from .metrics import Metrics, auroc, cohens_d, midpoint_accuracy

NGRAMS = (1, 2)
"""Word n-gram range of the bag of words."""
C = 1.0
"""Inverse L2 strength of the logistic regression (sklearn's default; not tuned)."""


def pair_texts(pairs: Sequence[TraitPair], position: str = "mean") -> tuple[list[str], list[str]]:
    """(positive texts, negative texts) of ``pairs`` as the activations at ``position`` saw them.

    >>> p = TraitPair("x", "g", "train", "Q?", "Yes!", "Q?", "No.")
    >>> pair_texts([p]), pair_texts([p], "last")
    ((['Yes!'], ['No.']), (['Q?\\nYes!'], ['Q?\\nNo.']))
    """
    if position == "mean":
        return [p.pos_response for p in pairs], [p.neg_response for p in pairs]
    return ([f"{p.pos_prompt}\n{p.pos_response}" for p in pairs],
            [f"{p.neg_prompt}\n{p.neg_response}" for p in pairs])


def fit_bag_of_words(train_pos: Sequence[str], train_neg: Sequence[str]) -> Callable[[Sequence[str]], np.ndarray]:
    """A bag-of-words logistic regression fitted on the train texts, as a scorer: texts →
    decision scores (higher = more like the positives)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    if not (train_pos and train_neg):
        raise ValueError("the surface baseline needs train texts of both classes")
    vec = CountVectorizer(ngram_range=NGRAMS, binary=True, lowercase=True)
    x = vec.fit_transform([*train_pos, *train_neg])
    y = np.r_[np.ones(len(train_pos)), np.zeros(len(train_neg))]
    clf = LogisticRegression(C=C, max_iter=1000).fit(x, y)
    return lambda texts: clf.decision_function(vec.transform(list(texts)))


def bag_of_words_scores(train_pos: Sequence[str], train_neg: Sequence[str], val_pos: Sequence[str],
                        val_neg: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decision scores of held-out positive and negative texts under a bag-of-words logistic
    regression fitted on the train texts (higher = more like the positives)."""
    if not (val_pos and val_neg):
        raise ValueError("the surface baseline needs held-out texts of both classes")
    score = fit_bag_of_words(train_pos, train_neg)
    return score(val_pos), score(val_neg)


def surface_metrics(ds: TraitDataset, position: str = "mean", train: str = "train", val: str = "val"
                    ) -> tuple[Metrics, tuple[np.ndarray, np.ndarray]]:
    """The surface baseline of one trait set: its held-out ``Metrics`` (as a direction's) and the
    held-out scores (row i of each: pair i of the ``val`` split, for a bootstrap over pairs)."""
    tp, tn = pair_texts(ds.split(train), position)  # type: ignore[arg-type]
    vp, vn = pair_texts(ds.split(val), position)  # type: ignore[arg-type]
    ps, ns = bag_of_words_scores(tp, tn, vp, vn)
    return Metrics(val_accuracy=midpoint_accuracy(ps, ns), polarity_correct=bool(ps.mean() > ns.mean()),
                   effect_size=cohens_d(ps, ns), auroc=auroc(ps, ns)), (ps, ns)
