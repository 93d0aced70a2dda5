"""The student's training objective L = L_MT-Hid + L_MT-Dis + L_Task (Eq. 3), each term switchable and weighted
(``loss.<term>_weight``, 1 in the paper)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mtbert_ray.common.metric_names import NO_LABEL
from mtbert_ray.config import LossConfig
from mtbert_ray.core.losses import (
    SoftLabels,
    ensemble_distill_loss,
    fill_unlabeled,
    hidden_teacher_scale,
    mt_distill_loss,
    mt_hidden_loss,
    task_loss,
)


@dataclass
class HiddenStates:
    """What L_MT-Hid is computed from when the objective computes it: the student's layers 1..K [B, L, Hs], the mapped
    and aligned teacher states per teacher and layer, the maps W_ij (None: identity) and the attention mask."""

    student: Sequence[torch.Tensor]
    teachers: Sequence[Sequence[torch.Tensor]]
    projections: Sequence[Sequence[nn.Module]] | None = None
    attention_mask: torch.Tensor | None = None


def soft_labels(loss: LossConfig) -> SoftLabels:
    """The soft-label settings of ``loss`` (temperature, correctness weights, t², the teacher mixture, the ensemble)."""
    return SoftLabels(temperature=loss.temperature, weighted=loss.weighted, t2_scale=loss.t2_scale,
                      weighting=loss.teacher_weighting, prior=loss.teacher_prior,
                      confidence_temperature=loss.confidence_temperature, ensemble=loss.ensemble)


def mt_bert_objective(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    loss: LossConfig,
    hidden: torch.Tensor | HiddenStates | None = None,
) -> dict[str, torch.Tensor]:
    """The enabled terms (unweighted) and their weighted sum under ``"loss"``:
    L = λ_hid·hidden + λ_dis·distill + λ_task·task, λ = ``loss.<term>_weight`` (the paper: all 1).

    hidden:  the hidden loss the caller computed (a tensor: inside the DDP-wrapped forward), or
             mt_hidden_loss of ``HiddenStates`` (student layers 1..K, mapped + aligned teacher states, W_ij)
    distill: mt_distill_loss (``loss.ensemble == "none"``; teachers mixed by ``loss.teacher_weighting`` and
             ``loss.teacher_prior``) or ensemble_distill_loss (Fig. 3 baselines), with ``soft_labels(loss)``
    task:    task_loss (cross-entropy with the gold labels, over the labelled rows)

    Unlabelled rows (label −1, ``data.unlabeled``) take no task loss; in the soft-label term their gold label is the
    teachers' class and the row weighs u_b (``losses.fill_unlabeled``, ``loss.unlabeled_rows``); the hidden loss
    treats every row alike.
    """
    terms: dict[str, torch.Tensor] = {}
    if loss.task:
        terms["task"] = task_loss(student_logits, labels)
    if loss.distill:
        row_weight = None
        if bool((labels == NO_LABEL).any()):
            labels, row_weight = fill_unlabeled(teacher_logits, labels, loss.teacher_prior, loss.unlabeled_rows)
        soft = soft_labels(loss)
        distill = mt_distill_loss if loss.ensemble == "none" else ensemble_distill_loss
        terms["distill"] = distill(student_logits, teacher_logits, labels, soft, row_weight)
    if loss.hidden:
        if isinstance(hidden, HiddenStates):
            hidden = mt_hidden_loss(hidden.student, hidden.teachers, hidden.projections, hidden.attention_mask, loss.project,
                                    hidden_teacher_scale(loss.teacher_prior, range(len(hidden.teachers)), loss.teacher_weighting))
        if hidden is None:
            raise ValueError("loss.hidden: the hidden loss needs its value or the states it is computed from (HiddenStates)")
        terms["hidden"] = hidden
    weights = {"hidden": loss.hidden_weight, "distill": loss.distill_weight, "task": loss.task_weight}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms
