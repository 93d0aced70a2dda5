"""Classification metrics from a confusion matrix (summed across Train workers before use).

Every evaluation computes accuracy, macro-F1 and Matthews correlation, and F1 of the positive
class (id 1) for two-class tasks — GLUE's leaderboard metrics (MCC for CoLA, F1 and accuracy for
MRPC/QQP, accuracy elsewhere) and the paper's (accuracy and macro-F1 for MIND).
"""
from __future__ import annotations

import math

import torch


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """M [C, C] int64 with M[y, ŷ] = number of examples of true class y predicted as ŷ."""
    index = labels.long() * num_labels + predictions.long()
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def accuracy(cm: torch.Tensor) -> float:
    """trace(M) / ΣM."""
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else 0.0


def macro_f1(cm: torch.Tensor) -> float:
    """mean over classes c that occur (as truth or prediction) of F1_c = 2·TP / (2·TP + FP + FN)."""
    cm = cm.double()
    tp = cm.diag()
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not bool(present.any()):
        return 0.0
    return float((2 * tp[present] / denom[present]).mean())


def f1_positive(cm: torch.Tensor, positive: int = 1) -> float:
    """F1 of class ``positive``: 2·TP / (2·TP + FP + FN) (0 when the class never occurs)."""
    cm = cm.double()
    tp = cm[positive, positive]
    fp = cm[:, positive].sum() - tp
    fn = cm[positive, :].sum() - tp
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else 0.0


def matthews_corrcoef(cm: torch.Tensor) -> float:
    """Matthews correlation (Gorodkin's multi-class form; the binary MCC for two classes):

        MCC = (c·s − Σ_k p_k·t_k) / sqrt((s² − Σ_k p_k²) · (s² − Σ_k t_k²))

    with c = trace(M) (correct), s = ΣM, t_k = row sums (true counts), p_k = column sums
    (predicted counts); 0 when a denominator factor is 0 (as scikit-learn).
    """
    cm = cm.double()
    c, s = float(cm.diag().sum()), float(cm.sum())
    t, p = cm.sum(dim=1), cm.sum(dim=0)
    cov_yp = c * s - float((p * t).sum())
    cov_pp = s * s - float((p * p).sum())
    cov_yy = s * s - float((t * t).sum())
    denom = math.sqrt(cov_pp * cov_yy)
    return cov_yp / denom if denom > 0 else 0.0


def metrics_from_confusion(cm: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """``{prefix}accuracy``, ``macro_f1``, ``mcc``, ``f1`` (two classes only) and ``examples``."""
    out = {
        f"{prefix}accuracy": accuracy(cm),
        f"{prefix}macro_f1": macro_f1(cm),
        f"{prefix}mcc": matthews_corrcoef(cm),
    }
    if cm.shape[0] == 2:
        out[f"{prefix}f1"] = f1_positive(cm)
    out[f"{prefix}examples"] = int(cm.sum())
    return out
