"""The MT-BERT student as a transformers model: ``AutoModelForSequenceClassification`` and ``pipeline`` load it.

This file needs only torch and transformers: an exported student folder carries a copy of it (``auto_map`` in its
``config.json``), so in an environment without mtbert-ray

    pipeline("text-classification", model=FOLDER, trust_remote_code=True)

gives the run's label names and probabilities. With mtbert-ray imported the classes are registered with the Auto
classes (``mtbert_ray/__init__.py``) and no remote code is needed.

The model is the K-layer encoder followed by the MT-BERT head — attentive pooling and one dense layer:

    score_t = w2ᵀ tanh(W1 h_t + b1);  α = softmax over real tokens of score;  logits = W · Σ_t α_t h_t + b

with the same parameter names as ``mtbert_ray.models.student.StudentModel`` (``encoder.*``, ``head.pooling.proj``,
``head.pooling.query``, ``head.dense``), so a trained student's state dict loads as it is.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "mtbert-student"


class MTBertStudentConfig(PretrainedConfig):
    """The student's config: the encoder's own config (``encoder``, a dict with its ``model_type``), the head's query
    dimension, the sequence length it was trained with, whether it reads sentence pairs, and what it was made from.

    (``max_seq_length``, not ``max_length``: transformers reads ``max_length`` as a generation setting.)"""

    model_type = MODEL_TYPE

    def __init__(self, encoder: dict[str, Any] | None = None, query_dim: int = 200, max_seq_length: int = 512,
                 pair: bool = False, teachers: list[str] | None = None, init_from: str | None = None, **kwargs: Any) -> None:
        self.encoder = dict(encoder or {})
        self.query_dim = int(query_dim)
        self.max_seq_length = int(max_seq_length)
        self.pair = bool(pair)
        self.teachers = list(teachers or [])
        self.init_from = init_from
        kwargs.setdefault("problem_type", "single_label_classification")
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        settings = dict(self.encoder)
        model_type = settings.pop("model_type", None)
        if not model_type:
            raise ValueError("MTBertStudentConfig.encoder: expected the encoder's config with its model_type")
        return AutoConfig.for_model(model_type, **settings)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.get("hidden_size", 0))


class StudentPooling(nn.Module):
    """Attentive pooling over real tokens (``attention_mask`` 1)."""

    def __init__(self, hidden_size: int, query_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, query_dim)
        self.query = nn.Linear(query_dim, 1, bias=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(torch.tanh(self.proj(hidden))).squeeze(-1)  # [B, L]
        mask = attention_mask.to(torch.bool)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.einsum("bl,blh->bh", torch.softmax(scores, dim=-1), hidden)


class StudentHead(nn.Module):
    def __init__(self, hidden_size: int, num_labels: int, query_dim: int) -> None:
        super().__init__()
        self.pooling = StudentPooling(hidden_size, query_dim)
        self.dense = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pooling(hidden, attention_mask))


def check_rows_have_tokens(attention_mask: torch.Tensor) -> None:
    """A row with no real token has no summary (its logits would be NaN): refused, in eager mode."""
    if not bool(attention_mask.to(torch.bool).any(dim=-1).all()):
        raise ValueError("MTBertStudent: a row of attention_mask has no real token (an empty text?)")


class MTBertStudentForSequenceClassification(PreTrainedModel):
    config_class = MTBertStudentConfig
    base_model_prefix = "mtbert_student"
    main_input_name = "input_ids"
    _no_split_modules: list[str] = []

    def __init__(self, config: MTBertStudentConfig) -> None:
        super().__init__(config)
        encoder_config = config.encoder_config()
        try:
            self.encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False)
        except TypeError:  # an encoder class without a pooler option
            self.encoder = AutoModel.from_config(encoder_config)
        self.head = StudentHead(int(encoder_config.hidden_size), config.num_labels, config.query_dim)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # weights come from the checkpoint; keep torch's defaults
        return

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs: Any):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            check_rows_have_tokens(attention_mask)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0):
            feed["token_type_ids"] = token_type_ids
        out = self.encoder(**feed, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.head(out.last_hidden_state, attention_mask)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits,
                                        hidden_states=out.hidden_states if output_hidden_states else None)


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForSequenceClassification`` know the student (``import mtbert_ray`` calls it)."""
    from transformers import AutoModelForSequenceClassification

    AutoConfig.register(MODEL_TYPE, MTBertStudentConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(MTBertStudentConfig, MTBertStudentForSequenceClassification, exist_ok=True)
