"""Stage 1 — multi-teacher co-finetuning, the per-worker loop for Ray Train's ``TorchTrainer``.

N teachers and one shared attentive pooling + dense head; loss Σ_i CE(y, y_i) (summed, not
averaged: ARCHITECTURE.md decision j); Adam with one learning rate for the teachers and one for
the head(s); evaluation of every teacher after each epoch; a checkpoint per epoch in the
``TeacherEnsemble.save_pretrained`` layout (safetensors) plus the optimizer and epoch, reported
with ``ray.train.report``; a restarted run continues from ``ray.train.get_checkpoint()``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F

from mtbert_ray.config import ExperimentConfig
from mtbert_ray.data.loader import PadCollate, inputs_for
from mtbert_ray.data.shards import PreparedData
from mtbert_ray.models.teachers import TeacherEnsemble
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

log = logging.getLogger(__name__)


def teacher_metric_names(n: int) -> list[str]:
    return [f"teacher{i}_" for i in range(n)]


def cofinetune_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_i CE(y, y_i) for teacher logits [N, B, C] (each CE a batch mean)."""
    return sum(F.cross_entropy(logits[i], labels) for i in range(logits.shape[0]))


def cofinetune_loop(loop_config: dict[str, Any]) -> None:
    cfg = ExperimentConfig.model_validate(loop_config["experiment"])
    data = PreparedData.from_dict(loop_config["data"])
    rank, _ = world()
    seed_everything(cfg.seed)  # identical initial head on every worker (DDP also broadcasts it)
    device = device_for_worker()

    model = TeacherEnsemble(
        cfg.teachers, data.num_labels, cfg.cofinetune.query_dim, cfg.cofinetune.shared_head, cfg.trust_remote_code
    )
    head_params = list((model.head if model.shared_head else model.heads).parameters())
    optimizer = torch.optim.Adam(
        [
            {"params": list(model.encoders.parameters()), "lr": cfg.cofinetune.lr},
            {"params": head_params, "lr": cfg.cofinetune.head_lr},
        ],
        weight_decay=cfg.cofinetune.weight_decay,
    )
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored = TeacherEnsemble.from_pretrained(folder, cfg.trust_remote_code)
            model.load_state_dict(restored.state_dict())
            state = load_training_state(Path(folder), optimizer)
        start_epoch = int(state["epoch"]) + 1
        log.info("co-finetuning resumes after epoch %d", start_epoch)
    model = ray.train.torch.prepare_model(model)

    aliases = [data.model_tokenizer[t] for t in cfg.teachers]
    collate = PadCollate({a: data.tokenizers[a].pad_token_id for a in set(aliases)})
    names = teacher_metric_names(len(aliases))
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("validation")
    batch_size = cfg.cofinetune.batch_size

    for epoch in range(start_epoch, cfg.cofinetune.epochs):
        model.train()
        started, total, steps = time.time(), 0.0, 0
        batches = TimedBatches(iterate_batches(train_shard, batch_size, collate, device, cfg.seed + epoch))
        for step, batch in enumerate(batches):
            maybe_inject_fault("cofinetune", epoch, step)
            logits = model([inputs_for(batch, a) for a in aliases]).logits
            loss = cofinetune_loss(logits, batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            if rank == 0 and step % 50 == 0:
                progress(f"[co-finetune] epoch {epoch + 1}/{cfg.cofinetune.epochs} step {step} loss {float(loss.detach()):.4f}")
        train_seconds = time.time() - started
        model.eval()
        cms = evaluate(
            lambda b: model([inputs_for(b, a) for a in aliases]).logits,
            iterate_batches(eval_shard, batch_size, collate, device),
            data.num_labels,
            heads=len(aliases),
            device=device,
        )
        metrics = {
            "epoch": epoch + 1,
            "start_epoch": start_epoch,  # > 0 when this attempt resumed from a checkpoint
            "train_loss": total / max(steps, 1),
            "train_seconds": train_seconds,  # the training pass of this epoch (no evaluation)
            "eval_seconds": time.time() - started - train_seconds,
            "data_wait_seconds": batches.wait_seconds,  # of train_seconds, waiting for input batches
            **named_metrics(cms, [f"val_{n}" for n in names]),
        }
        metrics["val_mean_accuracy"] = sum(metrics[f"val_{n}accuracy"] for n in names) / len(names)
        if rank == 0:
            with checkpoint_dir() as folder:
                unwrap(model).save_pretrained(folder)
                save_training_state(folder, optimizer, {"epoch": epoch, "metrics": metrics})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
