"""Hand-made held-out data for record tests: per-cell pair scores that match a target accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def pair_scores(df: pd.DataFrame, keys: list[str], n_pairs: int = 40, seed: int = 0
                ) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Scores for each row of ``df`` keyed by its ``keys`` columns: ``n_pairs`` positive scores
    around +μ and negative around −μ (unit noise), μ = Φ⁻¹(val_accuracy), so the midpoint accuracy
    is near the row's ``val_accuracy``."""
    rng = np.random.default_rng(seed)
    out = {}
    for r in df.itertuples(index=False):
        mu = float(stats.norm.ppf(np.clip(r.val_accuracy, 0.01, 0.99)))
        out[tuple(getattr(r, k) for k in keys)] = (mu + rng.normal(size=n_pairs), -mu + rng.normal(size=n_pairs))
    return out
