"""Classification metrics from a confusion matrix (summed across Train workers before use)."""
from __future__ import annotations

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


def metrics_from_confusion(cm: torch.Tensor, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}accuracy": accuracy(cm), f"{prefix}macro_f1": macro_f1(cm), f"{prefix}examples": int(cm.sum())}
