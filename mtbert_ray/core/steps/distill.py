"""Stage 3 — distillation of the K-layer student: the step the epoch loop (``core.loop``) runs.

Student = embeddings + first K layers of ``student.init_from`` (pretrained) with a head copied
from the co-finetuned shared head; loss L_MT-Hid + L_MT-Dis + L_Task (``core.objective``);
W_ij in their own Adam parameter group. The hidden loss — W_ij included — is computed inside
the forward of ``DistillModule``, the module DDP wraps, so every trainable parameter takes part
in the synchronised forward. Teacher outputs come from the stage-2 cache when present, from the
frozen teachers on the fly otherwise (``mtbert_ray.core.targets``, the same functions either way).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch import nn

from mtbert_ray.config import LossConfig, StudentConfig
from mtbert_ray.core.collate import PadCollate, inputs_for
from mtbert_ray.core.losses import hidden_teacher_scale, mt_hidden_loss
from mtbert_ray.core.objective import mt_bert_objective
from mtbert_ray.core.targets import cached_targets, teacher_targets
from mtbert_ray.models.projection import FIT_ROWS, Moments, build_projections, projection_plan, set_linear, token_moments
from mtbert_ray.models.student import StudentModel, build_student, init_head_from
from mtbert_ray.models.student_io import load_student_weights, save_student
from mtbert_ray.models.teachers import TeacherEnsemble, load_head_states, read_ensemble_meta

NAME = "distill"
STUDENT_DIR = "student"
PROJECTIONS_FILE = "projections.safetensors"


@dataclass
class DistillSpec:
    """What the distillation step needs (built from the experiment's context by ``experiment.context``)."""

    student: StudentConfig
    loss: LossConfig
    lr: float
    num_labels: int
    label_names: list[str]
    teacher_tokenizations: list[str]  # each teacher's, in the teachers' order
    student_tokenization: str
    pad_ids: dict[str, int]  # tokenization → pad token id
    teacher_widths: list[int]
    layer_maps: list[list[int]]  # the teacher layer of student layer j, per teacher (decision c)
    hidden_teachers: list[int]  # the teachers L_MT-Hid learns from (empty: no hidden loss)
    head_folder: str | None  # the co-finetuned ensemble whose head the student copies
    teachers_checkpoint: str | None  # the co-finetuned teachers, run on the fly when there is no cache
    projection_lr: float | None = None
    cache_columns: dict[str, int] | None = None  # the teacher cache's float columns and widths; None: teachers on the fly
    cache_dtype: str = "float32"
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["student"], out["loss"] = self.student.model_dump(mode="json"), self.loss.model_dump(mode="json")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillSpec":
        return cls(**{**data, "student": StudentConfig.model_validate(data["student"]),
                      "loss": LossConfig.model_validate(data["loss"])})


class DistillModule(nn.Module):
    """The trainable parts of stage 3 in one module (DDP wraps them together): the student and W_ij.

    ``forward`` returns the student's logits and, given the teachers' states, the hidden loss
    L_MT-Hid = Σ_i Σ_j MSE(H^s_j, W_ij H^i_j) — computed here so W_ij are used inside the wrapped forward.
    The W_ij of the teachers listed in ``fit_pending`` are fitted by least squares before each of the first training
    batches' loss, to the states of every row seen so far until ``fit_rows`` rows (``models.projection.FIT_ROWS``):
    the student's states come from an extra no-grad forward in eval mode (no dropout noise in the fit). Under DDP the
    sums are all-reduced, so every rank solves the same system over every rank's rows.
    """

    def __init__(self, student: StudentModel, projections: nn.ModuleList | None, project: str = "teacher",
                 fit_pending: Sequence[int] = (), teacher_scale: Sequence[float] | None = None,
                 fit_rows: int = FIT_ROWS) -> None:
        super().__init__()
        self.student = student
        self.projections = projections
        self.project = project
        self.fit_pending = list(fit_pending)
        self.fit_rows = fit_rows
        self._moments: dict[tuple[int, int], Moments] = {}
        self._fitted_rows = 0
        self.teacher_scale = list(teacher_scale) if teacher_scale is not None else None  # s_i of the hidden loss

    def forward(self, inputs: dict[str, torch.Tensor], teacher_states: list[list[torch.Tensor]] | None = None):
        if teacher_states is not None and self.fit_pending:
            self._fit(inputs, teacher_states)
        out = self.student.forward_batch(inputs, output_hidden_states=teacher_states is not None)
        if teacher_states is None:
            return out.logits, None
        student_states = out.hidden_states[1:]
        hidden = mt_hidden_loss(student_states, teacher_states, self.projections, inputs["attention_mask"], self.project,
                                self.teacher_scale)
        return out.logits, hidden

    @torch.no_grad()
    def _fit(self, inputs: dict[str, torch.Tensor], teacher_states) -> None:
        training = self.student.training
        self.student.eval()
        try:
            student_states = self.student.forward_batch(inputs, output_hidden_states=True).hidden_states[1:]
        finally:
            self.student.train(training)
        mask = inputs["attention_mask"]
        rows = torch.tensor(float(mask.shape[0]), device=mask.device)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(rows)
        self._fitted_rows += int(rows.item())
        for i in self.fit_pending:
            for j, linear in enumerate(self.projections[i]):
                source, target = (teacher_states[i][j], student_states[j]) if self.project == "teacher" else \
                    (student_states[j], teacher_states[i][j])
                batch = token_moments(source.detach().float(), target.detach().float(), mask)
                if distributed:
                    for tensor in batch.tensors():
                        dist.all_reduce(tensor)
                moments = self._moments[(i, j)] = batch if (i, j) not in self._moments else self._moments[(i, j)].add(batch)
                set_linear(linear, *moments.solve())
        if self._fitted_rows >= self.fit_rows:
            self.fit_pending, self._moments = [], {}


def student_head_decision(head_init: str, head_widths: list[int], student_width: int) -> str:
    """How the student's pooling + dense layer start (docs/design.md, decision i; ``student.head_init``), in words.

    ``head_widths``: the width of each head it could be copied from (one shared head, or one per teacher with
    ``cofinetune.shared_head: false``) — this run's co-finetuned heads (``from_teachers``) or those of the named teacher
    co-finetuned alone. Starts with "copied" when it is copied.
    """
    if head_init == "random":
        return "random (student.head_init: random)"
    source = "this run's co-finetuned head" if head_init == "from_teachers" else f"the head of {head_init} co-finetuned alone"
    if student_width in head_widths:
        return f"copied from {source} ({student_width} wide)"
    return (f"random — {source} is {'/'.join(map(str, sorted(set(head_widths))))} wide, "
            f"the student {student_width}")


def build_distill_module(spec: DistillSpec) -> tuple[DistillModule, str]:
    """Student from ``student.init_from`` (head copied from the co-finetuned head in ``spec.head_folder`` when the widths
    allow) and the maps W_ij of the teachers ``spec.hidden_teachers`` (indices; empty: no hidden loss); and the head
    decision (``student_head_decision``)."""
    cfg, loss = spec.student, spec.loss
    student = build_student(cfg.init_from, cfg.num_layers, spec.num_labels, cfg.query_dim, spec.trust_remote_code)
    decision = student_head_decision(cfg.head_init, head_widths(spec.head_folder), student.width)
    if decision.startswith("copied") and not init_head_from(student, load_head_states(spec.head_folder)):
        raise RuntimeError(f"{spec.head_folder}: no co-finetuned head of width {student.width} to copy")
    projections, fit, hidden = None, [], spec.hidden_teachers
    if hidden:
        widths = [spec.teacher_widths[i] for i in hidden]
        projections = build_projections(widths, student.width, student.num_layers, loss.project, loss.projection_init)
        plan = projection_plan(widths, student.width, loss.projection_init)
        fit = [i for i, start in enumerate(plan) if start == "least_squares"]
    scale = hidden_teacher_scale(loss.teacher_prior, hidden, loss.teacher_weighting) if hidden else None
    return DistillModule(student, projections, loss.project, fit, scale), decision


def head_widths(teachers_folder: str | Path) -> list[int]:
    """Widths of the co-finetuned head(s) of an ensemble folder: the shared head's, else each teacher's."""
    meta = read_ensemble_meta(teachers_folder)
    return [int(meta.get("head_width") or meta["widths"][0])] if meta["shared_head"] else list(meta["widths"])


class DistillStep:
    """The distillation model, optimizer groups and loss (``core.loop.Step``)."""

    heads = [""]
    spec_class = DistillSpec

    def __init__(self, spec: DistillSpec) -> None:
        self.spec = spec
        self.module: DistillModule | None = None
        self.ensemble: TeacherEnsemble | None = None
        self.head_decision = ""

    @property
    def uses_cache(self) -> bool:
        return self.spec.cache_columns is not None

    def build(self, device: torch.device) -> DistillModule:
        spec, loss = self.spec, self.spec.loss
        module, self.head_decision = build_distill_module(spec)
        if not (loss.task or loss.distill):  # hidden loss only: the head learns nothing, keep it fixed
            for p in module.student.head.parameters():
                p.requires_grad_(False)
        self.module = module.to(device)
        if not self.uses_cache and (loss.distill or loss.hidden):
            self.ensemble = TeacherEnsemble.from_pretrained(spec.teachers_checkpoint, spec.trust_remote_code).to(device).eval()
            for p in self.ensemble.parameters():
                p.requires_grad_(False)
        return self.module

    def optimizer_groups(self) -> list[dict[str, Any]]:
        spec = self.spec
        groups = [{"params": [p for p in self.module.student.parameters() if p.requires_grad], "lr": spec.lr}]
        if self.module.projections is not None:
            groups.append({"params": list(self.module.projections.parameters()), "lr": spec.projection_lr or spec.lr})
        return groups

    def targets(self, batch: dict[str, torch.Tensor]):
        """(teacher logits [N, B, C], aligned states of the hidden loss's teachers or None) for a training batch."""
        spec, loss = self.spec, self.spec.loss
        if not (loss.distill or loss.hidden):
            return None, None
        hidden = spec.hidden_teachers
        if self.ensemble is None:
            return cached_targets(batch, len(spec.teacher_tokenizations), spec.num_labels, spec.student.num_layers, hidden)
        return teacher_targets(self.ensemble, batch, spec.teacher_tokenizations, spec.student_tokenization,
                               spec.layer_maps if hidden else None, hidden)

    def loss(self, train_module: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = self.spec.loss
        t_logits, t_states = self.targets(batch)
        logits, hidden = train_module(inputs_for(batch, self.spec.student_tokenization), t_states if loss.hidden else None)
        return mt_bert_objective(logits, batch["label"], t_logits, loss, hidden=hidden)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.student.forward_batch(inputs_for(batch, self.spec.student_tokenization)).logits.unsqueeze(0)

    def report_extras(self) -> dict[str, Any]:
        return {"student_head": self.head_decision, "student_head_from_teachers": self.head_decision.startswith("copied")}

    def save(self, folder: Path) -> None:
        save_student(self.module.student, folder / STUDENT_DIR, self.spec.label_names)
        if self.module.projections is not None:
            save_model(self.module.projections, str(folder / PROJECTIONS_FILE))

    def load(self, folder: Path) -> None:
        load_student_weights(self.module.student, folder / STUDENT_DIR)
        if self.module.projections is not None:
            load_model(self.module.projections, str(folder / PROJECTIONS_FILE))
        self.module.fit_pending = []  # resumed: the W_ij come from the checkpoint

    def collate(self, split: str) -> PadCollate:
        spec = self.spec
        pads = spec.pad_ids
        student = {spec.student_tokenization: pads[spec.student_tokenization]}
        if split != "train":
            return PadCollate(student)
        if self.uses_cache:
            return PadCollate(student, spec.cache_columns, stored_dtype=spec.cache_dtype)
        return PadCollate({t: pads[t] for t in dict.fromkeys([*spec.teacher_tokenizations, spec.student_tokenization])})
