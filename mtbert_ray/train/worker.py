"""The entry point of a Train stage in each worker (or in the calling process): context → step → loop."""
from __future__ import annotations

from typing import Any

from mtbert_ray.context import StageContext
from mtbert_ray.data.sources import UNLABELED
from mtbert_ray.models.hub import quiet_transformers
from mtbert_ray.train.cofinetune import CofinetuneStep
from mtbert_ray.train.distill import DistillStep
from mtbert_ray.train.loop import LoopSpec, run_epochs
from mtbert_ray.train.session import RayTrainSession, StageSession

COFINETUNE, DISTILL = "co-finetune", "distill"


def distill_seed(cfg) -> int:
    """Stage 3's seed: ``distill.seed``, else derived from the experiment seed."""
    return cfg.distill.seed if cfg.distill.seed is not None else cfg.seed + 1000


def loop_spec(ctx: StageContext, stage: str) -> LoopSpec:
    """The loop settings of ``stage`` from the experiment config (batch sizes per worker and micro-batch)."""
    cfg = ctx.config
    section = cfg.cofinetune if stage == COFINETUNE else cfg.distill
    data = ctx.data
    submission = (data.submission_file or "test.tsv", data.submission_labels or data.label_names)
    return LoopSpec(
        stage=stage,
        epochs=section.epochs,
        micro_batch=ctx.micro_batch("cofinetune" if stage == COFINETUNE else "distill"),
        grad_accum_steps=section.grad_accum_steps,
        seed=cfg.seed if stage == COFINETUNE else distill_seed(cfg),
        select=ctx.select_metric,
        mode=cfg.select.mode,
        precision=cfg.resources.precision,
        use_gpu=cfg.resources.use_gpu,
        threads=None if cfg.resources.use_gpu else cfg.resources.cpus_per_worker,
        train_rows=data.rows["train"] + (0 if stage == COFINETUNE else data.rows.get(UNLABELED, 0)),
        num_labels=data.num_labels,
        weight_decay=section.weight_decay,
        submission=submission,
        test_labelled=data.labelled.get("test", True),
    )


def stage_worker(config: dict[str, Any], session: StageSession | None = None) -> None:
    """``config = {"stage": "co-finetune" | "distill", "context": StageContext.to_dict()}``."""
    quiet_transformers()
    ctx = StageContext.from_dict(config["context"])
    stage = config["stage"]
    step = CofinetuneStep(ctx) if stage == COFINETUNE else DistillStep(ctx)
    run_epochs(step, session if session is not None else RayTrainSession(), loop_spec(ctx, stage))
