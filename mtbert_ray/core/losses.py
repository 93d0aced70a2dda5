"""MT-BERT losses as pure functions (no state, no Ray): Eq. 1–3 of Wu, Wu & Huang (2021).

Conventions (docs/design.md, decisions d–g): teacher tensors are detached inside every
function, so no gradient ever reaches a teacher; soft cross-entropy sums over classes and
averages over the batch; the distillation weight is computed at temperature 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mtbert_ray.common.metric_names import NO_LABEL
from mtbert_ray.models.projection import ProjectSide

EnsembleMode = Literal["average", "average_logits", "weighted"]
TeacherWeighting = Literal["paper", "normalized", "confidence"]


def _full(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 / fp16 activations under autocast are promoted; float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


UnlabeledRows = Literal["confidence", "uniform"]


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@dataclass(frozen=True)
class SoftLabels:
    """How the soft-label term turns teacher logits into targets and mixes the teachers (``loss.*`` of the config).

    temperature t (Eq. 2); weighted: the per-sample correctness weights 1/(1+CE) (Eq. 2); t2_scale: × t² (Hinton
    et al.; not in the paper); weighting / prior α / confidence_temperature τ: the teacher mixture
    (``mixture_weights``); ensemble: one ensembled soft label instead of L_MT-Dis (``ensemble_distill_loss``, Fig. 3).
    """

    temperature: float = 1.0
    weighted: bool = True
    t2_scale: bool = False
    weighting: TeacherWeighting = "paper"
    prior: tuple[float, ...] | None = None
    confidence_temperature: float = 1.0
    ensemble: Literal["none", "average", "average_logits", "weighted"] = "none"

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)
        if self.prior is not None:
            object.__setattr__(self, "prior", tuple(float(a) for a in self.prior))


DEFAULT_SOFT_LABELS = SoftLabels()


def task_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_Task = mean over labelled b of CE(y_b, y_s,b) = −log softmax(y_s,b)[y_b]; rows labelled ``NO_LABEL`` (−1)
    take no part (0 when the batch has none labelled)."""
    labelled = labels != NO_LABEL
    total = F.cross_entropy(_full(student_logits), labels, ignore_index=NO_LABEL, reduction="sum")
    return total / labelled.sum().clamp(min=1)


def fill_unlabeled(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    prior: Sequence[float] | None = None,
    rows: UnlabeledRows = "confidence",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [B] with every ``NO_LABEL`` row given the teachers' class, row weights u [B]), detached.

    For an unlabelled row b, with the prior-weighted mixture p̄_b = Σ_i α_i softmax(y_i,b) (temperature 1):

        ŷ_b = argmax_c p̄_b,c          (stands in for y_b in the correctness weights of Eq. 2)
        u_b = max_c p̄_b,c (confidence) or 1 (uniform)

    A labelled row keeps y_b and u_b = 1. u multiplies the row's soft-label term: a sentence the teachers are unsure
    of teaches less, a sure one nearly as much as a labelled one.
    """
    logits = _full(teacher_logits.detach())
    alpha = normalized_prior(prior, logits.shape[0]).to(logits.device).view(-1, 1, 1)
    mixture = (alpha * torch.softmax(logits, dim=-1)).sum(dim=0)  # [B, C]
    confidence, guess = mixture.max(dim=-1)
    unlabelled = labels == NO_LABEL
    filled = torch.where(unlabelled, guess, labels)
    if rows == "confidence":
        weight = torch.where(unlabelled, confidence, torch.ones_like(confidence))
    elif rows == "uniform":
        weight = torch.ones_like(confidence)
    else:
        raise ValueError(f"unlabelled rows must be 'confidence' or 'uniform', got {rows!r}")
    return filled, weight


def teacher_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """w_ib = 1 / (1 + CE(y_b, softmax(y_i,b))) for teacher logits [N, B, C] → [N, B], detached (Eq. 2).

    A teacher that is confidently right on sample b gets a weight near 1; a confidently
    wrong one a weight near 0. Computed at temperature 1.
    """
    return 1.0 / (1.0 + teacher_cross_entropy(teacher_logits, labels))


def teacher_cross_entropy(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE_ib = −log softmax(y_i,b)[y_b] for teacher logits [N, B, C] → [N, B], detached, at temperature 1."""
    logits = teacher_logits.detach()
    log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    index = labels.long().view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return -log_probs.gather(-1, index).squeeze(-1)


def normalized_prior(prior: Sequence[float] | None, n: int) -> torch.Tensor:
    """α_i ≥ 0 normalised to sum 1 (uniform 1/N when ``prior`` is None) → [N] float32."""
    if prior is None:
        return torch.full((n,), 1.0 / n)
    alpha = torch.tensor([float(a) for a in prior], dtype=torch.float32)
    if alpha.numel() != n or bool((alpha < 0).any()) or not float(alpha.sum()) > 0:
        raise ValueError(f"teacher prior: expected {n} weights >= 0 with a positive sum, got {list(prior)}")
    return alpha / alpha.sum()


def mixture_weights(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    mode: TeacherWeighting = "paper",
    prior: Sequence[float] | None = None,
    confidence_temperature: float = 1.0,
    use_labels: bool = True,
) -> torch.Tensor:
    """Per-sample teacher weights w_ib [N, B], detached, from teacher logits [N, B, C], labels [B] and priors α_i (Σ α = 1).

    With CE_ib = CE(y_b, softmax(y_i,b)) at temperature 1:

        paper:       w_ib = N·α_i / (1 + CE_ib)                       (Eq. 2 when α is uniform: 1 / (1 + CE))
        normalized:  w_ib = (α_i / (1 + CE_ib)) / Σ_k α_k / (1 + CE_kb)   (Σ_i w_ib = 1)
        confidence:  w_ib = softmax_i(log α_i − CE_ib / τ)             (confidence-aware KD; Σ_i w_ib = 1)

    Without labels (unlabelled rows) or with ``use_labels=False`` (``loss.weighted: false``) the correctness factor is
    left out: paper N·α_i, normalized and confidence α_i. Σ_i w_ib = 1 means the soft-label term weighs one teacher's
    worth whatever the number of teachers; ``paper`` weighs up to N.
    """
    logits = teacher_logits.detach()
    n, batch = logits.shape[0], logits.shape[1]
    alpha = normalized_prior(prior, n).to(logits.device).view(n, 1)
    if labels is None or not use_labels:
        weights = alpha.expand(n, batch)
        return weights * n if mode == "paper" else weights
    if mode == "paper":
        return n * alpha * teacher_weights(logits, labels)
    if mode == "normalized":
        raw = alpha * teacher_weights(logits, labels)
        return raw / raw.sum(dim=0, keepdim=True)
    if mode == "confidence":
        if not confidence_temperature > 0:
            raise ValueError(f"confidence temperature must be > 0, got {confidence_temperature}")
        ce = teacher_cross_entropy(logits, labels)
        return torch.softmax(torch.log(alpha.clamp(min=1e-12)) - ce / confidence_temperature, dim=0) * (alpha > 0)
    raise ValueError(f"teacher weighting must be 'paper', 'normalized' or 'confidence', got {mode!r}")


def _with_unlabeled(teacher_logits: torch.Tensor, labels: torch.Tensor | None, prior: Sequence[float] | None,
                    row_weight: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels with no ``NO_LABEL`` left (``fill_unlabeled``, confidence row weights unless ``row_weight`` is given)."""
    if labels is None or not bool((labels == NO_LABEL).any()):
        return labels, row_weight
    filled, confidence = fill_unlabeled(teacher_logits, labels, prior)
    return filled, confidence if row_weight is None else row_weight


def soft_cross_entropy(student_logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample CE(p, y_s/t) = −Σ_c p_c · log_softmax(y_s/t)_c → [B] (in float32 under autocast too)."""
    return -(_full(soft_targets) * torch.log_softmax(_full(student_logits) / temperature, dim=-1)).sum(dim=-1)


def mt_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    soft: SoftLabels = DEFAULT_SOFT_LABELS,
    row_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_MT-Dis = Σ_i mean_b u_b · w_ib · Σ_c −softmax(y_i,b/t)_c · log_softmax(y_s,b/t)_c   (Eq. 2; u_b = 1 there).

    ``w = teacher_weights(teacher_logits, labels)`` when ``soft.weighted`` and labels are given, otherwise 1 — the
    paper; other mixtures and priors α_i through ``mixture_weights`` (``soft.weighting``, ``soft.prior``).
    ``soft.t2_scale`` multiplies by t² (Hinton et al.; not in the paper). ``row_weight`` u [B]: per-row weights
    (default 1; rows labelled ``NO_LABEL`` are filled by ``fill_unlabeled``, with its confidence weights unless given).
    student_logits [B, C], teacher_logits [N, B, C], labels [B].
    """
    t = soft.temperature
    teacher_logits = _full(teacher_logits.detach())
    labels, row_weight = _with_unlabeled(teacher_logits, labels, soft.prior, row_weight)
    targets = torch.softmax(teacher_logits / t, dim=-1)  # [N, B, C]
    per_sample = soft_cross_entropy(student_logits.unsqueeze(0), targets, t)  # [N, B]
    if soft.weighting != "paper" or soft.prior is not None:
        per_sample = per_sample * mixture_weights(teacher_logits, labels, soft.weighting, soft.prior,
                                                  soft.confidence_temperature, soft.weighted)
    elif soft.weighted and labels is not None:  # Eq. 2 as the paper writes it (the same numbers as mixture_weights' paper)
        per_sample = per_sample * teacher_weights(teacher_logits, labels)
    if row_weight is not None:
        per_sample = per_sample * row_weight.detach().to(per_sample.dtype).unsqueeze(0)
    loss = per_sample.mean(dim=1).sum()
    return loss * t**2 if soft.t2_scale else loss


def ensemble_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    soft: SoftLabels = SoftLabels(ensemble="average"),
    row_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distillation from one ensembled soft label (the baselines of the paper's Fig. 3), ``soft.ensemble``:

    average:         p_b = (1/N) Σ_i softmax(y_i,b/t)          (the teachers' soft labels averaged)
    average_logits:  p_b = softmax(((1/N) Σ_i y_i,b) / t)      (logits averaged: TextBrewer's MultiTeacherDistiller)
    weighted: p_b = Σ_i α_ib softmax(y_i,b/t),  α_ib = w_ib / Σ_k w_kb,  w = teacher_weights
    loss = mean_b u_b · Σ_c −p_b,c · log_softmax(y_s,b/t)_c      (u = ``row_weight``, default 1; × t² with t2_scale)
    """
    t, mode = soft.temperature, soft.ensemble
    teacher_logits = _full(teacher_logits.detach())
    labels, row_weight = _with_unlabeled(teacher_logits, labels, None, row_weight)
    probs = torch.softmax(teacher_logits / t, dim=-1)  # [N, B, C]
    if mode == "average":
        targets = probs.mean(dim=0)
    elif mode == "average_logits":
        targets = torch.softmax(teacher_logits.mean(dim=0) / t, dim=-1)
    elif mode == "weighted":
        if labels is None:
            raise ValueError("ensemble_distill_loss: mode='weighted' needs labels")
        w = teacher_weights(teacher_logits, labels)
        alpha = w / w.sum(dim=0, keepdim=True)
        targets = (alpha.unsqueeze(-1) * probs).sum(dim=0)
    else:
        raise ValueError(f"ensemble_distill_loss: mode must be 'average', 'average_logits' or 'weighted', got {mode!r}")
    per_sample = soft_cross_entropy(student_logits, targets, t)
    if row_weight is not None:
        per_sample = per_sample * row_weight.detach().to(per_sample.dtype)
    loss = per_sample.mean()
    return loss * t**2 if soft.t2_scale else loss


def masked_mse(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of (a − b)² over real tokens and features: Σ_{b,l,h} m_bl (a − b)² / (H · Σ_{b,l} m_bl) (float32)."""
    sq = (_full(a) - _full(b)).pow(2)
    if attention_mask is None:
        return sq.mean()
    mask = attention_mask.to(sq.dtype).unsqueeze(-1)
    return (sq * mask).sum() / (mask.sum().clamp(min=1.0) * sq.shape[-1])


def mt_hidden_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[Sequence[torch.Tensor]],
    projections: Sequence[Sequence[nn.Module]] | None,
    attention_mask: torch.Tensor | None = None,
    project: ProjectSide = "teacher",
    teacher_scale: Sequence[float] | None = None,
) -> torch.Tensor:
    """L_MT-Hid = Σ_i s_i Σ_j MSE(H^s_j, W_ij H^i_j)   (Eq. 1 with s_i = 1), masked mean over real tokens and features.

    ``teacher_scale`` s_i weighs each teacher's term (``hidden_teacher_scale``: the priors α_i); default 1 (the paper).

    ``student_states[j]`` is [B, L, Hs] (student layer j+1); ``teacher_states[i][j]`` is
    [B, L, Ht_i], already taken from the teacher layer mapped to student layer j+1 and
    aligned to the student's tokens; ``projections[i][j]`` is W_ij (``nn.Linear(Ht_i, Hs)``).
    With ``project="student"`` the map goes the other way: MSE(W_ij H^s_j, H^i_j), W_ij: Hs → Ht_i.
    ``projections=None``: every W_ij is the identity (widths must match).
    """
    if projections is None:
        projections = [[nn.Identity()] * len(student_states) for _ in teacher_states]
    if len(teacher_states) != len(projections):
        raise ValueError(f"mt_hidden_loss: {len(teacher_states)} teachers' states but {len(projections)} projection sets")
    scales = list(teacher_scale) if teacher_scale is not None else [1.0] * len(teacher_states)
    if len(scales) != len(teacher_states):
        raise ValueError(f"mt_hidden_loss: {len(teacher_states)} teachers' states but {len(scales)} teacher scales")
    total = student_states[0].new_zeros(())
    for states_i, proj_i, scale in zip(teacher_states, projections, scales):
        if len(states_i) != len(student_states) or len(proj_i) != len(student_states):
            raise ValueError(
                f"mt_hidden_loss: {len(student_states)} student layers but a teacher has "
                f"{len(states_i)} states and {len(proj_i)} projections"
            )
        for h_s, h_t, w in zip(student_states, states_i, proj_i):
            h_t = h_t.detach()
            if project == "teacher":
                term = masked_mse(h_s, w(h_t), attention_mask)
            elif project == "student":
                term = masked_mse(w(h_s), h_t, attention_mask)
            else:
                raise ValueError(f"mt_hidden_loss: project must be 'teacher' or 'student', got {project!r}")
            total = total + (term if scale == 1.0 else scale * term)
    return total


def hidden_teacher_scale(prior: Sequence[float] | None, hidden: Sequence[int], mode: TeacherWeighting = "paper") -> list[float] | None:
    """s_i of the hidden loss for the teachers ``hidden`` (indices into the prior): the priors restricted to them and
    renormalised — × their number for ``paper`` (so a uniform prior gives the paper's s_i = 1), as they are otherwise
    (Σ s_i = 1, like the normalized mixtures). None: the paper's 1 for every teacher."""
    if prior is None and mode == "paper":
        return None
    n = len(hidden)
    if prior is None:
        return [1.0 / n] * n
    alpha = normalized_prior(prior, len(prior))
    picked = alpha[list(hidden)]
    if not float(picked.sum()) > 0:
        return [0.0] * n
    picked = picked / picked.sum()
    return [float(a) * (n if mode == "paper" else 1.0) for a in picked]
