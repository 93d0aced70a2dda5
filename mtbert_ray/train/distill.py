"""Stage 3 — distillation of the K-layer student, the per-worker loop for Ray Train's ``TorchTrainer``.

Student = embeddings + first K layers of ``student.init_from`` (pretrained) with a head copied
from the co-finetuned shared head; loss L_MT-Hid + L_MT-Dis + L_Task (``train.objective``);
W_ij in their own Adam parameter group; teacher outputs from the stage-2 cache when present,
from the frozen teachers on the fly otherwise; evaluation after every epoch; a checkpoint per
epoch (Ray keeps the best by the selection metric, and the latest for resuming).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from mtbert_ray.cache import cache_float_columns, cached_targets, teacher_targets
from mtbert_ray.config import ExperimentConfig
from mtbert_ray.data.loader import PadCollate, inputs_for
from mtbert_ray.data.shards import PreparedData
from mtbert_ray.models.projection import build_projections
from mtbert_ray.models.student import StudentModel, build_student, init_head_from
from mtbert_ray.models.teachers import TeacherEnsemble, load_head_states, read_ensemble_meta
from mtbert_ray.train.common import (
    checkpoint_dir,
    device_for_worker,
    TimedBatches,
    evaluate,
    iterate_batches,
    load_training_state,
    maybe_inject_fault,
    named_metrics,
    progress,
    save_training_state,
    seed_everything,
    unwrap,
    world,
)
from mtbert_ray.train.objective import mt_bert_objective

log = logging.getLogger(__name__)

STUDENT_DIR = "student"
PROJECTIONS_FILE = "projections.safetensors"


class DistillModule(nn.Module):
    """The trainable parts of stage 3 in one module (so DDP wraps them together): student and W_ij."""

    def __init__(self, student: StudentModel, projections: nn.ModuleList | None) -> None:
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, batch: dict[str, torch.Tensor], output_hidden_states: bool = False):
        """The student's forward (through the DDP wrapper, so gradients are synchronised)."""
        return self.student.forward_batch(batch, output_hidden_states=output_hidden_states)


@dataclass
class DistillSetup:
    """What stage 3 trains: the module (student + W_ij), its optimizer, and the frozen teachers when they run on the fly."""

    module: DistillModule
    optimizer: torch.optim.Optimizer
    ensemble: TeacherEnsemble | None
    meta: dict[str, Any]
    head_from_teachers: bool


def setup_distillation(
    cfg: ExperimentConfig, data: PreparedData, teachers_folder: str | Path, use_cache: bool, device: torch.device
) -> DistillSetup:
    """Student from ``student.init_from`` (head copied from the co-finetuned shared head), W_ij in their
    own Adam parameter group, and — without the cache — the co-finetuned teachers, frozen."""
    student = build_student(
        cfg.student.init_from, cfg.student.num_layers, data.num_labels, cfg.student.query_dim, cfg.trust_remote_code
    )
    meta = read_ensemble_meta(teachers_folder)
    head_from_teachers = cfg.student.head_init == "shared_head" and init_head_from(student, load_head_states(teachers_folder))
    ensemble = None
    if not use_cache:
        ensemble = TeacherEnsemble.from_pretrained(teachers_folder, cfg.trust_remote_code).to(device).eval()
        for p in ensemble.parameters():
            p.requires_grad_(False)
    projections = (
        build_projections(meta["widths"], student.width, student.num_layers, cfg.loss.project) if cfg.loss.hidden else None
    )
    module = DistillModule(student, projections).to(device)
    groups = [{"params": list(student.parameters()), "lr": cfg.distill.lr}]
    if projections is not None:
        groups.append({"params": list(projections.parameters()), "lr": cfg.distill.projection_lr or cfg.distill.lr})
    optimizer = torch.optim.Adam(groups, weight_decay=cfg.distill.weight_decay)
    return DistillSetup(module, optimizer, ensemble, meta, bool(head_from_teachers))


@dataclass
class DistillStep:
    """One optimisation step of stage 3 — the same code in the Ray Train loop and in plain PyTorch.

    loss = L_MT-Hid + L_MT-Dis + L_Task (``train.objective.mt_bert_objective``); teacher targets come
    from the collated cache columns when ``ensemble`` is None, else from the frozen teachers.
    """

    cfg: ExperimentConfig
    teacher_aliases: list[str]
    student_alias: str
    num_labels: int
    num_student_layers: int
    layer_maps: list[list[int]] | None
    ensemble: TeacherEnsemble | None

    def terms(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        s_in = inputs_for(batch, self.student_alias)
        out = module(s_in, output_hidden_states=cfg.loss.hidden)
        t_logits, t_states = None, None
        if cfg.loss.distill or cfg.loss.hidden:
            if self.ensemble is None:
                t_logits, t_states = cached_targets(
                    batch, len(self.teacher_aliases), self.num_labels, self.num_student_layers, cfg.loss.hidden
                )
            else:
                t_logits, t_states = teacher_targets(
                    self.ensemble, batch, self.teacher_aliases, self.student_alias, self.layer_maps if cfg.loss.hidden else None
                )
        return mt_bert_objective(
            out.logits, batch["label"], t_logits, cfg.loss, cfg.distill,
            student_states=out.hidden_states[1:] if cfg.loss.hidden else None,
            teacher_states=t_states,
            projections=unwrap(module).projections,
            attention_mask=s_in["attention_mask"],
        )

    def train_step(self, module: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = self.terms(module, batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return terms


def distill_collates(cfg: ExperimentConfig, data: PreparedData, meta: dict[str, Any], use_cache: bool) -> tuple[PadCollate, PadCollate]:
    """(train, eval) collate functions: token columns of the tokenizers a batch needs, plus cache columns."""
    teacher_aliases = [data.model_tokenizer[t] for t in cfg.teachers]
    student_alias = data.model_tokenizer[cfg.student.init_from]
    pads = {a: data.tokenizers[a].pad_token_id for a in {*teacher_aliases, student_alias}}
    floats = cache_float_columns(meta["widths"], cfg.student.num_layers, cfg.loss.hidden) if use_cache else {}
    train = PadCollate(pads if not use_cache else {student_alias: pads[student_alias]}, floats)
    return train, PadCollate({student_alias: pads[student_alias]})


def distill_loop(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    cfg = ExperimentConfig.model_validate(loop_config["experiment"])
    data = PreparedData.from_dict(loop_config["data"])
    use_cache: bool = loop_config["use_cache"]
    layer_maps = loop_config["layer_maps"]
    rank, _ = world()
    seed_everything(cfg.seed)
    device = device_for_worker()
    teachers_ckpt = ray.train.Checkpoint(loop_config["teachers_checkpoint"])
    with teachers_ckpt.as_directory() as folder:
        setup = setup_distillation(cfg, data, folder, use_cache, device)
    module, optimizer = setup.module, setup.optimizer

    start_epoch, best = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_student_checkpoint(module, Path(folder))
            state = load_training_state(Path(folder), optimizer)
        start_epoch, best = int(state["epoch"]) + 1, state.get("best")
        log.info("distillation resumes after epoch %d", start_epoch)
    unused = not (cfg.loss.task or cfg.loss.distill)  # hidden-only: the head gets no gradient
    module = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": unused})
    student_module = unwrap(module).student

    teacher_aliases = [data.model_tokenizer[t] for t in cfg.teachers]
    student_alias = data.model_tokenizer[cfg.student.init_from]
    step_fn = DistillStep(cfg, teacher_aliases, student_alias, data.num_labels, cfg.student.num_layers, layer_maps, setup.ensemble)
    train_collate, eval_collate = distill_collates(cfg, data, setup.meta, use_cache)
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("validation")
    select = loop_config.get("select_metric", "val_accuracy")

    for epoch in range(start_epoch, cfg.distill.epochs):
        module.train()
        started, sums, steps = time.time(), {}, 0
        batches = TimedBatches(iterate_batches(train_shard, cfg.distill.batch_size, train_collate, device, cfg.seed + 1000 + epoch))
        for step, batch in enumerate(batches):
            maybe_inject_fault("distill", epoch, step)
            terms = step_fn.train_step(module, optimizer, batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
            if rank == 0 and step % 50 == 0:
                shown = " ".join(f"{k} {float(v.detach()):.4f}" for k, v in terms.items())
                progress(f"[distill] epoch {epoch + 1}/{cfg.distill.epochs} step {step} {shown}")
        train_seconds = time.time() - started
        module.eval()
        cms = evaluate(
            lambda b: student_module.forward_batch(inputs_for(b, student_alias)).logits,
            iterate_batches(eval_shard, cfg.distill.batch_size, eval_collate, device),
            data.num_labels,
            device=device,
        )
        metrics = {
            "epoch": epoch + 1,
            "start_epoch": start_epoch,  # > 0 when this attempt resumed from a checkpoint
            "train_seconds": train_seconds,  # the training pass of this epoch (no evaluation)
            "eval_seconds": time.time() - started - train_seconds,
            "data_wait_seconds": batches.wait_seconds,  # of train_seconds, waiting for input batches
            "train_steps": steps,
            **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()},
            **named_metrics(cms, ["val_"]),
        }
        best = metrics[select] if best is None else max(best, metrics[select])
        metrics["best_" + select] = best
        metrics["student_head_from_teachers"] = setup.head_from_teachers
        if rank == 0:
            with checkpoint_dir() as folder:
                save_student_checkpoint(unwrap(module), folder, data.label_names)
                save_training_state(folder, optimizer, {"epoch": epoch, "best": best, "metrics": metrics})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
    return None


def save_student_checkpoint(module: DistillModule, folder: Path, label_names: list[str]) -> None:
    """``student/`` (encoder ``save_pretrained`` + head) and the W_ij, all safetensors."""
    from mtbert_ray.export import save_student

    save_student(module.student, folder / STUDENT_DIR, label_names)
    if module.projections is not None:
        save_model(module.projections, str(folder / PROJECTIONS_FILE))


def load_student_checkpoint(module: DistillModule, folder: Path) -> None:
    from mtbert_ray.export import load_student_weights

    load_student_weights(module.student, folder / STUDENT_DIR)
    if module.projections is not None:
        load_model(module.projections, str(folder / PROJECTIONS_FILE))
