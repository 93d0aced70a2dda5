"""Attentive pooling (Yang et al. 2016; the pooling MT-BERT shares across teachers)."""
from __future__ import annotations

import torch
from torch import nn


class AttentivePooling(nn.Module):
    """Summarise token states into one vector with a learned additive attention.

    For token states h_t (t over real tokens) and attention mask m_t:

        score_t = w2ᵀ tanh(W1 h_t + b1)
        α_t     = exp(score_t − max_u score_u) · m_t / Σ_u exp(score_u − max_u score_u) · m_u
        out     = Σ_t α_t h_t                                   → [B, H]

    The maximum is taken over real tokens only, so padding never changes the result
    (appending padding tokens leaves the output bit-for-bit comparable, ≤1e-6).
    A row with no real token is an error: it has no summary, and a silent zero or NaN
    would corrupt a loss without a trace.
    """

    def __init__(self, hidden_size: int, query_dim: int = 200) -> None:
        super().__init__()
        if hidden_size <= 0 or query_dim <= 0:
            raise ValueError(f"AttentivePooling: hidden_size and query_dim must be > 0, got {hidden_size}, {query_dim}")
        self.hidden_size = hidden_size
        self.query_dim = query_dim
        self.proj = nn.Linear(hidden_size, query_dim)  # W1, b1
        self.query = nn.Linear(query_dim, 1, bias=False)  # w2

    def attention_weights(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """α [B, L]: masked, numerically stable softmax of the token scores."""
        scores = self.query(torch.tanh(self.proj(hidden))).squeeze(-1)  # [B, L]
        if attention_mask is None:
            return torch.softmax(scores, dim=-1)
        mask = attention_mask.to(torch.bool)
        if not bool(mask.any(dim=-1).all()):
            raise ValueError("AttentivePooling: a row of attention_mask has no real token (all zeros)")
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.attention_weights(hidden, attention_mask)
        return torch.einsum("bl,blh->bh", weights, hidden)
