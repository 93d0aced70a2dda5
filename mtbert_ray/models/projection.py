"""The learnable maps W_ij of the multi-teacher hidden loss (Eq. 1), and how they start.

``loss.projection_init``: identity (equal widths only), xavier (random), or least squares — W_ij and its bias
fitted in closed form to the (teacher, student) states of the first training batch, so the hidden loss starts
from the best linear map between the two spaces instead of from noise; auto = identity where the widths match,
least squares where they differ (ARCHITECTURE decision b: a random start made the hidden loss hurt).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtbert_ray.losses import ProjectSide


def projection_plan(teacher_widths: Sequence[int], student_width: int, init: str = "auto") -> list[str]:
    """How each teacher's W_i· starts: "identity", "least_squares" or "xavier" (``loss.projection_init``)."""
    plan = []
    for width in teacher_widths:
        if init == "auto":
            plan.append("identity" if width == student_width else "least_squares")
        elif init == "identity" and width != student_width:
            plan.append("xavier")  # identity needs equal widths
        else:
            plan.append(init)
    return plan


def build_projections(
    teacher_widths: Sequence[int],
    student_width: int,
    num_student_layers: int,
    project: ProjectSide = "teacher",
    init: str = "auto",
) -> nn.ModuleList:
    """W[i][j] for teacher i and student layer j: ``nn.Linear(Ht_i, Hs)`` (``project="teacher"``) or
    ``nn.Linear(Hs, Ht_i)`` (``project="student"``); identity or Xavier-uniform per ``projection_plan``
    (least-squares maps start as Xavier and are fitted by ``fit_projection`` before the first step)."""
    sets = []
    for width, start in zip(teacher_widths, projection_plan(teacher_widths, student_width, init)):
        d_in, d_out = (width, student_width) if project == "teacher" else (student_width, width)
        layers = []
        for _ in range(num_student_layers):
            linear = nn.Linear(d_in, d_out)
            with torch.no_grad():
                if start == "identity":
                    linear.weight.copy_(torch.eye(d_in))
                else:
                    nn.init.xavier_uniform_(linear.weight)
                linear.bias.zero_()
            layers.append(linear)
        sets.append(nn.ModuleList(layers))
    return nn.ModuleList(sets)


def least_squares_map(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d_out, d_in], b [d_out]) minimising Σ_n ||y_n − W x_n − b||² + λ ||W||² (ridge regression), in closed form:

        x̄, ȳ = means;  X = x − x̄,  Y = y − ȳ;  λ = ridge · tr(XᵀX) / d_in
        W = Yᵀ X (XᵀX + λ I)⁻¹,   b = ȳ − W x̄

    computed in float64 (``x`` [n, d_in], ``y`` [n, d_out]).
    """
    x64, y64 = x.double(), y.double()
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    gram = xc.T @ xc
    lam = ridge * torch.trace(gram) / gram.shape[0]
    weight = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), xc.T @ yc).T
    bias = y_mean - weight @ x_mean
    return weight.to(x.dtype), bias.to(x.dtype)


@torch.no_grad()
def fit_projection(linear: nn.Linear, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Set ``linear`` to the least-squares map from ``source`` [B, L, d_in] to ``target`` [B, L, d_out] over real tokens."""
    real = mask.bool() if mask is not None else torch.ones(source.shape[:2], dtype=torch.bool, device=source.device)
    weight, bias = least_squares_map(source[real].float(), target[real].float())
    linear.weight.copy_(weight.to(linear.weight.dtype))
    linear.bias.copy_(bias.to(linear.bias.dtype))
