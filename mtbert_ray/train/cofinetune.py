"""Stage 1 — multi-teacher co-finetuning: the step the epoch loop (``train.loop``) runs.

N teachers and one shared attentive pooling + dense head; loss Σ_i CE(y, y_i) (summed, not
averaged: docs/design.md, decision j); Adam with one learning rate for the teachers and one for
the head(s); every teacher evaluated after each epoch (the selection metric is the teachers'
mean). Checkpoints use the ``TeacherEnsemble.save_pretrained`` layout (safetensors).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtbert_ray.context import StageContext
from mtbert_ray.data.loader import PadCollate, inputs_for
from mtbert_ray.losses import task_loss
from mtbert_ray.metric_names import teacher_head
from mtbert_ray.models.teachers import TeacherEnsemble


def cofinetune_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_i CE(y, y_i) for teacher logits [N, B, C] (each CE a batch mean)."""
    return sum(task_loss(logits[i], labels) for i in range(logits.shape[0]))


class CofinetuneStep:
    """The co-finetuning model, optimizer groups and loss (``train.loop.Step``)."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.heads = [teacher_head(i) for i in range(len(ctx.config.teachers))]
        self.model: TeacherEnsemble | None = None

    def build(self, device: torch.device) -> TeacherEnsemble:
        cfg = self.ctx.config
        model = TeacherEnsemble(cfg.teachers, self.ctx.data.num_labels, cfg.cofinetune.query_dim,
                                cfg.cofinetune.shared_head, cfg.trust_remote_code, head_width=self.ctx.head_width)
        if cfg.cofinetune.gradient_checkpointing:
            for encoder in model.encoders:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model.to(device)
        return self.model

    def optimizer_groups(self) -> list[dict[str, Any]]:
        cfg = self.ctx.config.cofinetune
        head = self.model.head if self.model.shared_head else self.model.heads
        return [
            {"params": list(self.model.encoders.parameters()), "lr": cfg.lr},
            {"params": list(head.parameters()), "lr": cfg.head_lr},
        ]

    def _inputs(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [inputs_for(batch, t) for t in self.ctx.teacher_tokenizations]

    def loss(self, train_module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": cofinetune_loss(train_module(self._inputs(batch)).logits, batch["label"])}

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(self._inputs(batch)).logits

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)

    def load(self, folder: Path) -> None:
        restored = TeacherEnsemble.from_pretrained(folder, self.ctx.config.trust_remote_code)
        self.model.load_state_dict(restored.state_dict())  # copied onto the model's device

    def collate(self, split: str) -> PadCollate:
        pads = self.ctx.pad_ids
        return PadCollate({t: pads[t] for t in dict.fromkeys(self.ctx.teacher_tokenizations)})
