"""The learnable maps W_ij of the multi-teacher hidden loss (Eq. 1)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtbert_ray.losses import ProjectSide


def build_projections(
    teacher_widths: Sequence[int],
    student_width: int,
    num_student_layers: int,
    project: ProjectSide = "teacher",
) -> nn.ModuleList:
    """W[i][j] for teacher i and student layer j: ``nn.Linear(Ht_i, Hs)`` (``project="teacher"``) or
    ``nn.Linear(Hs, Ht_i)`` (``project="student"``).

    Starts as the identity (zero bias) where the widths match, Xavier-uniform otherwise
    (ARCHITECTURE.md decision b: a random start made the hidden loss hurt in measurements).
    """
    sets = []
    for width in teacher_widths:
        d_in, d_out = (width, student_width) if project == "teacher" else (student_width, width)
        layers = []
        for _ in range(num_student_layers):
            linear = nn.Linear(d_in, d_out)
            with torch.no_grad():
                if d_in == d_out:
                    linear.weight.copy_(torch.eye(d_in))
                else:
                    nn.init.xavier_uniform_(linear.weight)
                linear.bias.zero_()
            layers.append(linear)
        sets.append(nn.ModuleList(layers))
    return nn.ModuleList(sets)
