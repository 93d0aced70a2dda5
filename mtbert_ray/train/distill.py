"""Stage 3 — distillation of the K-layer student: the step the epoch loop (``train.loop``) runs.

Student = embeddings + first K layers of ``student.init_from`` (pretrained) with a head copied
from the co-finetuned shared head; loss L_MT-Hid + L_MT-Dis + L_Task (``train.objective``);
W_ij in their own Adam parameter group. The hidden loss — W_ij included — is computed inside
the forward of ``DistillModule``, the module DDP wraps, so every trainable parameter takes part
in the synchronised forward. Teacher outputs come from the stage-2 cache when present, from the
frozen teachers on the fly otherwise (``mtbert_ray.targets``, the same functions either way).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from mtbert_ray.config import ExperimentConfig
from mtbert_ray.context import StageContext
from mtbert_ray.data.loader import PadCollate, inputs_for
from mtbert_ray.export import load_student_weights, save_student
from mtbert_ray.losses import hidden_teacher_scale, mt_hidden_loss
from mtbert_ray.models.projection import FIT_ROWS, Moments, build_projections, projection_plan, set_linear, token_moments
from mtbert_ray.models.student import StudentModel, build_student, init_head_from
from mtbert_ray.models.teachers import TeacherEnsemble, load_head_states, read_ensemble_meta
from mtbert_ray.targets import cached_targets, teacher_targets
from mtbert_ray.train.objective import mt_bert_objective

STUDENT_DIR = "student"
PROJECTIONS_FILE = "projections.safetensors"


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
        import torch.distributed as dist

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


def student_head_decision(cfg: ExperimentConfig, head_widths: list[int], student_width: int) -> str:
    """How the student's pooling + dense layer start (docs/design.md, decision i; ``student.head_init``), in words.

    ``head_widths``: the width of each head it could be copied from (one shared head, or one per teacher with
    ``cofinetune.shared_head: false``) — this run's co-finetuned heads (``from_teachers``) or those of the named teacher
    co-finetuned alone. Starts with "copied" when it is copied.
    """
    choice = cfg.student.head_init
    if choice == "random":
        return "random (student.head_init: random)"
    source = "this run's co-finetuned head" if choice == "from_teachers" else f"the head of {choice} co-finetuned alone"
    if student_width in head_widths:
        return f"copied from {source} ({student_width} wide)"
    return (f"random — {source} is {'/'.join(map(str, sorted(set(head_widths))))} wide, "
            f"the student {student_width}")


def build_distill_module(cfg: ExperimentConfig, num_labels: int, head_folder: str | Path,
                         teacher_widths: list[int], hidden_teachers: Sequence[int] = ()) -> tuple[DistillModule, str]:
    """Student from ``student.init_from`` (head copied from the co-finetuned head in ``head_folder`` when the widths
    allow) and the maps W_ij of the teachers ``hidden_teachers`` (indices; empty: no hidden loss); and the head decision
    (``student_head_decision``)."""
    student = build_student(cfg.student.init_from, cfg.student.num_layers, num_labels, cfg.student.query_dim,
                            cfg.trust_remote_code)
    decision = student_head_decision(cfg, head_widths(head_folder), student.width)
    if decision.startswith("copied") and not init_head_from(student, load_head_states(head_folder)):
        raise RuntimeError(f"{head_folder}: no co-finetuned head of width {student.width} to copy")
    projections, fit = None, []
    if hidden_teachers:
        widths = [teacher_widths[i] for i in hidden_teachers]
        projections = build_projections(widths, student.width, student.num_layers, cfg.loss.project,
                                        cfg.loss.projection_init)
        plan = projection_plan(widths, student.width, cfg.loss.projection_init)
        fit = [i for i, start in enumerate(plan) if start == "least_squares"]
    scale = hidden_teacher_scale(cfg.loss.teacher_prior, hidden_teachers, cfg.loss.teacher_weighting) if hidden_teachers else None
    return DistillModule(student, projections, cfg.loss.project, fit, scale), decision


def head_widths(teachers_folder: str | Path) -> list[int]:
    """Widths of the co-finetuned head(s) of an ensemble folder: the shared head's, else each teacher's."""
    meta = read_ensemble_meta(teachers_folder)
    return [int(meta.get("head_width") or meta["widths"][0])] if meta["shared_head"] else list(meta["widths"])


class DistillStep:
    """The distillation model, optimizer groups and loss (``train.loop.Step``)."""

    heads = [""]

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.module: DistillModule | None = None
        self.ensemble: TeacherEnsemble | None = None
        self.head_decision = ""
        self.hidden_teachers = ctx.hidden_teachers  # resolved once, not per batch

    @property
    def uses_cache(self) -> bool:
        return self.ctx.cache is not None

    def build(self, device: torch.device) -> DistillModule:
        cfg, ctx = self.ctx.config, self.ctx
        module, self.head_decision = build_distill_module(cfg, ctx.data.num_labels, ctx.head_source,
                                                          ctx.teacher_widths, self.hidden_teachers)
        if not (cfg.loss.task or cfg.loss.distill):  # hidden loss only: the head learns nothing, keep it fixed
            for p in module.student.head.parameters():
                p.requires_grad_(False)
        self.module = module.to(device)
        if not self.uses_cache and (cfg.loss.distill or cfg.loss.hidden):
            self.ensemble = TeacherEnsemble.from_pretrained(ctx.teachers_checkpoint, cfg.trust_remote_code).to(device).eval()
            for p in self.ensemble.parameters():
                p.requires_grad_(False)
        return self.module

    def optimizer_groups(self) -> list[dict[str, Any]]:
        cfg = self.ctx.config.distill
        groups = [{"params": [p for p in self.module.student.parameters() if p.requires_grad], "lr": cfg.lr}]
        if self.module.projections is not None:
            groups.append({"params": list(self.module.projections.parameters()), "lr": cfg.projection_lr or cfg.lr})
        return groups

    def targets(self, batch: dict[str, torch.Tensor]):
        """(teacher logits [N, B, C], aligned states of the hidden loss's teachers or None) for a training batch."""
        cfg, ctx = self.ctx.config, self.ctx
        if not (cfg.loss.distill or cfg.loss.hidden):
            return None, None
        hidden = self.hidden_teachers
        if self.ensemble is None:
            return cached_targets(batch, len(cfg.teachers), ctx.data.num_labels, cfg.student.num_layers, hidden)
        return teacher_targets(self.ensemble, batch, ctx.teacher_tokenizations, ctx.student_tokenization,
                               ctx.layer_maps if hidden else None, hidden)

    def loss(self, train_module: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.ctx.config
        t_logits, t_states = self.targets(batch)
        logits, hidden = train_module(inputs_for(batch, self.ctx.student_tokenization), t_states if cfg.loss.hidden else None)
        return mt_bert_objective(logits, batch["label"], t_logits, cfg.loss, cfg.distill, hidden_loss=hidden)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.student.forward_batch(inputs_for(batch, self.ctx.student_tokenization)).logits.unsqueeze(0)

    def report_extras(self) -> dict[str, Any]:
        return {"student_head": self.head_decision, "student_head_from_teachers": self.head_decision.startswith("copied")}

    def save(self, folder: Path) -> None:
        save_student(self.module.student, folder / STUDENT_DIR, self.ctx.data.label_names)
        if self.module.projections is not None:
            save_model(self.module.projections, str(folder / PROJECTIONS_FILE))

    def load(self, folder: Path) -> None:
        load_student_weights(self.module.student, folder / STUDENT_DIR)
        if self.module.projections is not None:
            load_model(self.module.projections, str(folder / PROJECTIONS_FILE))
        self.module.fit_pending = []  # resumed: the W_ij come from the checkpoint

    def collate(self, split: str) -> PadCollate:
        ctx = self.ctx
        pads = ctx.pad_ids
        student = {ctx.student_tokenization: pads[ctx.student_tokenization]}
        if split != "train":
            return PadCollate(student)
        if self.uses_cache:
            return PadCollate(student, ctx.cache_float_columns, stored_dtype=ctx.cache.dtype)
        return PadCollate({t: pads[t] for t in dict.fromkeys([*ctx.teacher_tokenizations, ctx.student_tokenization])})
