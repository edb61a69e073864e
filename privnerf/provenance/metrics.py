"""Ranking metrics for visibility prediction (numpy only)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc_ap(scores, labels) -> tuple[float, float]:
    """ROC AUC (Mann-Whitney, ties counted half) and average precision of ``scores`` for binary ``labels``.

    Example: ``auc_ap([0.1, 0.9], [0, 1]) == (1.0, 1.0)``; constant scores give AUC 0.5.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan"), float("nan")
    r = rankdata(s)
    auc = (r[y].sum() - pos * (pos + 1) / 2) / (pos * neg)
    order = np.argsort(-s, kind="stable")
    ys = y[order]
    ss = s[order]
    tp = np.cumsum(ys)
    # precision at each distinct threshold (the last index of each tie group), weighted by recall gained
    last = np.r_[ss[1:] != ss[:-1], True]
    prec = tp[last] / (np.flatnonzero(last) + 1)
    rec_gain = np.diff(np.r_[0, tp[last]]) / pos
    return float(auc), float((prec * rec_gain).sum())
