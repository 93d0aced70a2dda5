"""The learnable maps W_ij of the multi-teacher hidden loss (Eq. 1), and how they start.

``loss.projection_init``: identity (equal widths only), xavier (random), or least squares — W_ij and its bias
fitted in closed form to the (teacher, student) states of the first training rows (``FIT_ROWS``, the student in eval
mode; ``core.steps.distill.DistillModule``), so the hidden loss starts
from the best linear map between the two spaces instead of from noise; auto = identity where the widths match,
least squares where they differ (docs/design.md, decision b: a random start made the hidden loss hurt).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

ProjectSide = Literal["teacher", "student"]  # the side of W_ij in the hidden loss (decision b)


#: Rows whose states the least-squares W_ij are fitted to: the first training batches until this many (one 64-row batch
#: gave a 384 × 768 map ~64 × 20 tokens for 300k unknowns, a fit to its noise).
FIT_ROWS = 1000


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
    moments = Moments.of(x, y)
    weight, bias = moments.solve(ridge)
    return weight.to(x.dtype), bias.to(x.dtype)


class Moments:
    """Sums of a regression's samples, added batch by batch: n, Σx, Σy, Σ xxᵀ, Σ xyᵀ (float64) — enough for
    ``least_squares_map`` over every sample seen, since XᵀX = Σ xxᵀ − n x̄x̄ᵀ and XᵀY = Σ xyᵀ − n x̄ȳᵀ."""

    def __init__(self, n: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, sxx: torch.Tensor, sxy: torch.Tensor) -> None:
        self.n, self.sx, self.sy, self.sxx, self.sxy = n, sx, sy, sxx, sxy

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor) -> "Moments":
        x64, y64 = x.double(), y.double()
        n = torch.tensor(float(x64.shape[0]), dtype=torch.float64, device=x.device)
        return cls(n, x64.sum(0), y64.sum(0), x64.T @ x64, x64.T @ y64)

    def add(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.sx + other.sx, self.sy + other.sy, self.sxx + other.sxx, self.sxy + other.sxy)

    def tensors(self) -> list[torch.Tensor]:
        return [self.n, self.sx, self.sy, self.sxx, self.sxy]

    def solve(self, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of the ridge regression over the samples summed here, float64."""
        x_mean, y_mean = self.sx / self.n, self.sy / self.n
        gram = self.sxx - self.n * torch.outer(x_mean, x_mean)
        cross = self.sxy - self.n * torch.outer(x_mean, y_mean)
        lam = ridge * torch.trace(gram) / gram.shape[0]
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        weight = torch.linalg.solve(gram + lam * eye, cross).T
        return weight, y_mean - weight @ x_mean


def token_moments(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> Moments:
    """``Moments`` of the map from ``source`` [B, L, d_in] to ``target`` [B, L, d_out] over real tokens."""
    real = mask.bool() if mask is not None else torch.ones(source.shape[:2], dtype=torch.bool, device=source.device)
    return Moments.of(source[real].float(), target[real].float())


@torch.no_grad()
def set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear.weight.copy_(weight.to(linear.weight.dtype))
    linear.bias.copy_(bias.to(linear.bias.dtype))


@torch.no_grad()
def fit_projection(linear: nn.Linear, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Set ``linear`` to the least-squares map from ``source`` [B, L, d_in] to ``target`` [B, L, d_out] over real tokens."""
    set_linear(linear, *token_moments(source, target, mask).solve())
