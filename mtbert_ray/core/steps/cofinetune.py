"""Stage 1 — multi-teacher co-finetuning: the step the epoch loop (``core.loop``) runs.

N teachers and one shared attentive pooling + dense head; loss Σ_i CE(y, y_i) (summed, not
averaged: docs/design.md, decision j); Adam with one learning rate for the teachers and one for
the head(s); every teacher evaluated after each epoch (the selection metric is the teachers'
mean). Checkpoints use the ``TeacherEnsemble.save_pretrained`` layout (safetensors).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mtbert_ray.common.metric_names import teacher_head
from mtbert_ray.core.collate import PadCollate, inputs_for
from mtbert_ray.core.losses import task_loss
from mtbert_ray.models.teachers import TeacherEnsemble

NAME = "co-finetune"


@dataclass
class CofinetuneSpec:
    """What the co-finetuning step needs (built from the experiment's context by ``experiment.context``)."""

    teachers: list[str]
    num_labels: int
    teacher_tokenizations: list[str]  # each teacher's, in the order of ``teachers``
    pad_ids: dict[str, int]  # tokenization → pad token id
    lr: float  # the teacher encoders'
    head_lr: float  # the shared pooling + dense head's
    query_dim: int = 200
    shared_head: bool = True
    head_width: int | None = None  # None: the first teacher's
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CofinetuneSpec":
        return cls(**data)


def cofinetune_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_i CE(y, y_i) for teacher logits [N, B, C] (each CE a batch mean)."""
    return sum(task_loss(logits[i], labels) for i in range(logits.shape[0]))


class CofinetuneStep:
    """The co-finetuning model, optimizer groups and loss (``core.loop.Step``)."""

    spec_class = CofinetuneSpec

    def __init__(self, spec: CofinetuneSpec) -> None:
        self.spec = spec
        self.heads = [teacher_head(i) for i in range(len(spec.teachers))]
        self.model: TeacherEnsemble | None = None

    def build(self, device: torch.device) -> TeacherEnsemble:
        spec = self.spec
        model = TeacherEnsemble(spec.teachers, spec.num_labels, spec.query_dim, spec.shared_head, spec.trust_remote_code,
                                head_width=spec.head_width)
        if spec.gradient_checkpointing:
            for encoder in model.encoders:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model.to(device)
        return self.model

    def optimizer_groups(self) -> list[dict[str, Any]]:
        head = self.model.head if self.model.shared_head else self.model.heads
        return [
            {"params": list(self.model.encoders.parameters()), "lr": self.spec.lr},
            {"params": list(head.parameters()), "lr": self.spec.head_lr},
        ]

    def _inputs(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [inputs_for(batch, t) for t in self.spec.teacher_tokenizations]

    def loss(self, train_module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": cofinetune_loss(train_module(self._inputs(batch)).logits, batch["label"])}

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(self._inputs(batch)).logits

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)

    def load(self, folder: Path) -> None:
        restored = TeacherEnsemble.from_pretrained(folder, self.spec.trust_remote_code)
        self.model.load_state_dict(restored.state_dict())  # copied onto the model's device

    def collate(self, split: str) -> PadCollate:
        pads = self.spec.pad_ids
        return PadCollate({t: pads[t] for t in dict.fromkeys(self.spec.teacher_tokenizations)})
