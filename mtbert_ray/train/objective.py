"""The student's training objective L = L_MT-Hid + L_MT-Dis + L_Task (Eq. 3), each term switchable and weighted
(``loss.<term>_weight``, 1 in the paper)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtbert_ray.config import DistillConfig, LossConfig
from mtbert_ray.losses import (
    ensemble_distill_loss,
    fill_unlabeled,
    hidden_teacher_scale,
    mt_distill_loss,
    mt_hidden_loss,
    task_loss,
)
from mtbert_ray.metric_names import NO_LABEL


def mt_bert_objective(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    loss: LossConfig,
    distill: DistillConfig,
    student_states: Sequence[torch.Tensor] | None = None,
    teacher_states: Sequence[Sequence[torch.Tensor]] | None = None,
    projections: Sequence[Sequence[nn.Module]] | None = None,
    attention_mask: torch.Tensor | None = None,
    hidden_loss: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The enabled terms (unweighted) and their weighted sum under ``"loss"``:
    L = λ_hid·hidden + λ_dis·distill + λ_task·task, λ = ``loss.<term>_weight`` (the paper: all 1).

    hidden:  mt_hidden_loss(student layers 1..K, mapped + aligned teacher states, W_ij), or
             ``hidden_loss`` when the caller computed it (inside the DDP-wrapped forward)
    distill: mt_distill_loss (``loss.ensemble == "none"``; teachers mixed by ``loss.teacher_weighting`` and
             ``loss.teacher_prior``) or ensemble_distill_loss (Fig. 3 baselines)
    task:    task_loss (cross-entropy with the gold labels, over the labelled rows)

    Unlabelled rows (label −1, ``data.unlabeled``) take no task loss; in the soft-label term their gold label is the
    teachers' class and the row weighs u_b (``losses.fill_unlabeled``, ``loss.unlabeled_rows``); the hidden loss
    treats every row alike.
    """
    terms: dict[str, torch.Tensor] = {}
    if loss.task:
        terms["task"] = task_loss(student_logits, labels)
    row_weight = None
    if loss.distill and bool((labels == NO_LABEL).any()):
        labels, row_weight = fill_unlabeled(teacher_logits, labels, loss.teacher_prior, loss.unlabeled_rows)
    if loss.distill:
        if loss.ensemble == "none":
            terms["distill"] = mt_distill_loss(
                student_logits, teacher_logits, labels, distill.temperature, loss.weighted, distill.t2_scale,
                loss.teacher_weighting, loss.teacher_prior, loss.confidence_temperature, row_weight,
            )
        else:
            terms["distill"] = ensemble_distill_loss(
                student_logits, teacher_logits, labels, distill.temperature, loss.ensemble, distill.t2_scale, row_weight
            )
    if loss.hidden:
        terms["hidden"] = hidden_loss if hidden_loss is not None else mt_hidden_loss(
            student_states, teacher_states, projections, attention_mask, loss.project,
            hidden_teacher_scale(loss.teacher_prior, range(len(teacher_states)), loss.teacher_weighting),
        )
    weights = {"hidden": loss.hidden_weight, "distill": loss.distill_weight, "task": loss.task_weight}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    return terms
