"""The K-layer student: embeddings + first K Transformer layers of a pretrained checkpoint + its own head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from mtbert_ray.models.head import SharedHead
from mtbert_ray.models.hub import encoder_depth, load_encoder
from mtbert_ray.models.teachers import MODEL_INPUT_KEYS


@dataclass
class StudentOutput:
    """logits [B, C]; hidden_states[j] is the state after layer j (0 = embeddings), [B, L, H]."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class StudentModel(nn.Module):
    """A truncated pretrained encoder with attentive pooling + dense head (the same head shape as the teachers')."""

    def __init__(self, encoder: PreTrainedModel, num_labels: int, query_dim: int = 200) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = SharedHead(int(encoder.config.hidden_size), num_labels, query_dim)

    @property
    def num_layers(self) -> int:
        return encoder_depth(self.encoder)

    @property
    def width(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> StudentOutput:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            feed["token_type_ids"] = token_type_ids
        out = self.encoder(**feed, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.head(out.last_hidden_state, attention_mask)
        return StudentOutput(logits, out.hidden_states if output_hidden_states else None)

    def forward_batch(self, batch: dict[str, torch.Tensor], output_hidden_states: bool = False) -> StudentOutput:
        """Forward on a tokenized batch dict (extra keys are ignored)."""
        return self(**{k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}, output_hidden_states=output_hidden_states)


def build_student(
    init_from: str,
    num_layers: int,
    num_labels: int,
    query_dim: int = 200,
    trust_remote_code: bool = False,
) -> StudentModel:
    """Embeddings and the first ``num_layers`` Transformer layers of the *pretrained* checkpoint
    ``init_from`` (hub id or folder; any HF encoder architecture), plus a fresh pooling + head.

    Raises ``ModelLoadError`` when ``num_layers`` exceeds the checkpoint's depth.
    """
    encoder = load_encoder(init_from, num_layers=num_layers, trust_remote_code=trust_remote_code)
    return StudentModel(encoder, num_labels, query_dim)


def init_head_from(student: StudentModel, head_states: list[dict[str, torch.Tensor]]) -> bool:
    """Copy attentive pooling + dense weights from the first co-finetuned head whose width and classes
    match the student's (docs/design.md, decision i). Returns False (head left as initialised) otherwise."""
    target = student.head.state_dict()
    wanted = [k for k in target if k.startswith(("pooling.", "dense."))]
    for state in head_states:
        if all(k in state and state[k].shape == target[k].shape for k in wanted):
            student.head.load_state_dict({**target, **{k: state[k] for k in wanted}})
            return True
    return False
