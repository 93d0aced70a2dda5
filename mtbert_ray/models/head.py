"""The prediction head: attentive pooling + dense layer, shared by all teachers in co-finetuning."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtbert_ray.models.pooling import AttentivePooling


class SharedHead(nn.Module):
    """Attentive pooling followed by one dense layer: logits = W · pool(H) + b.

    ``input_sizes`` lists the hidden width of every encoder that feeds the head (one per
    teacher). The head works at ``hidden_size``; an encoder whose width differs reaches it
    through its own ``nn.Linear(width, hidden_size)`` adapter, and an encoder of the same
    width feeds it directly (no adapter, so the pooling and dense weights are literally the
    ones every teacher uses). With ``input_sizes=None`` the head takes one input of
    ``hidden_size`` — the student's own head.
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        query_dim: int = 200,
        input_sizes: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"SharedHead: num_labels must be >= 2, got {num_labels}")
        self.hidden_size = hidden_size
        self.num_labels = num_labels
        self.input_sizes = list(input_sizes) if input_sizes is not None else [hidden_size]
        self.adapters = nn.ModuleDict(
            {str(i): nn.Linear(width, hidden_size) for i, width in enumerate(self.input_sizes) if width != hidden_size}
        )
        self.pooling = AttentivePooling(hidden_size, query_dim)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, source: int = 0) -> torch.Tensor:
        """Logits [B, C] for the token states ``hidden`` [B, L, width of input ``source``]."""
        adapter = self.adapters[str(source)] if str(source) in self.adapters else None
        if adapter is not None:
            hidden = adapter(hidden)
        elif hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"SharedHead: input {source} has width {hidden.shape[-1]}, expected {self.hidden_size}"
            )
        return self.dense(self.dropout(self.pooling(hidden, attention_mask)))
