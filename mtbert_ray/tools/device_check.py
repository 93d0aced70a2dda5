"""``python -m mtbert_ray.device_check``: the MT-BERT core on one device in minutes — no Ray, no hub, no network.

For a GPU machine lent for a few minutes (torch, transformers, safetensors, pyyaml and pydantic installed): it builds
randomly initialised models of the paper's shapes (three 12 × 768 BERT teachers, a 6-layer student from the first
one; ``--tiny``: 2 × 64), synthetic token ids, and runs the project's own co-finetuning and distillation steps
(``CofinetuneStep``, ``DistillStep`` with the hidden loss on the fly, ``Optimization``) in fp32, bf16 and fp16 (with
the gradient scaler). It checks, per stage:

- **precision**: the bf16 / fp16 loss of a batch within ``TOLERANCE`` (relative) of fp32 on the same weights and batch
  (eval mode, so dropout does not differ);
- **accumulation**: 2 micro-batches of B/2 with ``grad_accum_steps=2`` reach the optimizer with the gradient of one
  batch of B (fp32, eval mode; compared where ``Optimization`` steps, relative to the largest gradient — Adam's first
  step is ±lr wherever a gradient is non-zero, so comparing parameters would compare signs of rounding noise);
- **resume**: save (the step's checkpoint files + optimizer state) → a fresh step loads it on the device → the next
  step equals the uninterrupted run's, with every optimizer moment on the device;
- **device**: every parameter and optimizer tensor on the device asked for (no CPU fallback);
- **throughput** (examples/s of training steps per stage and precision) and, on CUDA, the peak memory beside
  ``memory_fit``'s estimate for the same shapes.

One JSON line on stdout (``{"ok": ..., "failures": [...], "device": ..., "stages": {...}}``); exit status 1 when a
check fails. ``--tiny --cpu`` runs in the test suite (well under a minute), so the check cannot rot.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

from mtbert_ray.config import validate_config
from mtbert_ray.core.loop import Optimization
from mtbert_ray.core.steps.cofinetune import CofinetuneStep
from mtbert_ray.core.steps.distill import DistillStep
from mtbert_ray.core.training import autocast, load_training_state, save_training_state, seed_everything
from mtbert_ray.data.shards import PreparedData, TokenizerSpec
from mtbert_ray.experiment.context import StageContext
from mtbert_ray.models.hub import load_config, quiet_transformers
from mtbert_ray.models.layer_map import layer_map
from mtbert_ray.tools.memory_fit import cofinetune_memory, distill_memory, encoder_shape

TOLERANCE = {"bf16": 0.05, "fp16": 0.02}  # relative difference of a batch's loss against fp32
ACCUM_TOLERANCE = 1e-4  # largest |Δ gradient| / largest |gradient|, 2 × B/2 accumulated against one batch of B
RESUME_TOLERANCE = 1e-6
TOKENIZATION = "tok_check"


@dataclass(frozen=True)
class Shapes:
    teachers: int
    teacher_layers: int
    width: int
    heads: int
    student_layers: int
    batch: int
    length: int
    vocab: int
    steps: int  # timed steps per stage and precision

    @classmethod
    def paper(cls) -> "Shapes":  # three 12 × 768 teachers, a 6-layer student, batch 64 × 128 tokens
        return cls(3, 12, 768, 12, 6, 64, 128, 30522, 5)

    @classmethod
    def tiny(cls) -> "Shapes":
        return cls(3, 2, 64, 2, 1, 8, 16, 500, 2)


def _random_models(root: Path, shapes: Shapes) -> list[str]:
    """Folders of randomly initialised BERT encoders (config.json + safetensors), one per teacher."""
    names = []
    for i in range(shapes.teachers):
        torch.manual_seed(i)
        config = BertConfig(vocab_size=shapes.vocab, hidden_size=shapes.width, num_hidden_layers=shapes.teacher_layers,
                            num_attention_heads=shapes.heads, intermediate_size=4 * shapes.width,
                            max_position_embeddings=max(512, shapes.length))
        folder = root / f"random-teacher-{i}"
        BertModel(config).save_pretrained(folder)
        names.append(str(folder))
    return names


def _context(names: list[str], shapes: Shapes, precision: str, accum: int = 1) -> StageContext:
    cfg = validate_config({
        "name": "device-check", "teachers": names,
        "student": {"init_from": names[0], "num_layers": shapes.student_layers},
        "data": {"source": "files", "path": ".", "text_fields": ["text"], "max_length": shapes.length},
        "cofinetune": {"batch_size": shapes.batch, "grad_accum_steps": accum, "lr": 2e-5},
        "distill": {"batch_size": shapes.batch, "grad_accum_steps": accum, "lr": 1e-4},
        "resources": {"precision": precision},
    }, source="device_check")
    spec = TokenizerSpec(names[0], "check", 0, True)
    data = PreparedData(dataset_key="device-check", view_dir="", splits={}, rows={"train": shapes.batch}, label_names=["0", "1"],
                        pair=False, metrics=["accuracy"], tokenizations={TOKENIZATION: spec},
                        model_tokenization={n: TOKENIZATION for n in names})
    return StageContext(cfg, data)


def _batch(shapes: Shapes, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, shapes.vocab, (shapes.batch, shapes.length), generator=g)
    mask = torch.ones_like(ids)
    # padding in every other row: each half of the batch holds as many real tokens as the other, so the hidden loss's
    # mean over a micro-batch's tokens weighs them as one batch's mean does (the accumulation check compares the two)
    mask[1::2, shapes.length * 3 // 4:] = 0
    batch = {"label": torch.randint(0, 2, (shapes.batch,), generator=g), "example_id": torch.arange(shapes.batch),
             f"{TOKENIZATION}.input_ids": ids * mask, f"{TOKENIZATION}.attention_mask": mask,
             f"{TOKENIZATION}.token_type_ids": torch.zeros_like(ids)}
    return {k: v.to(device) for k, v in batch.items()}


def _half(batch: dict[str, torch.Tensor], part: int) -> dict[str, torch.Tensor]:
    n = next(iter(batch.values())).shape[0] // 2
    return {k: v[part * n:(part + 1) * n] for k, v in batch.items()}


def _stage_step(stage: str, ctx: StageContext):
    """The stage's step from its spec, as a Train worker builds it (``core.steps``)."""
    return CofinetuneStep(ctx.cofinetune_spec()) if stage == "cofinetune" else DistillStep(ctx.distill_spec())


def _build(stage: str, ctx, device: torch.device, precision: str, accum: int = 1):
    seed_everything(0)
    step = _stage_step(stage, ctx)
    module = step.build(device)
    optimizer = torch.optim.Adam(step.optimizer_groups())
    return step, module, Optimization(optimizer, precision, device, accum)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters() if p.requires_grad]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def _on_device(module: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    tensors = [*module.parameters(), *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())]
    return all(t.device.type == device.type for t in tensors)


def check_stage(stage: str, make_context: Callable[..., Any], shapes: Shapes, device: torch.device, precisions: list[str],
                root: Path) -> tuple[dict[str, Any], list[str]]:
    """Every check of one stage; (its figures, failure lines). ``make_context(precision, accum=1)``: its StageContext."""
    failures: list[str] = []
    out: dict[str, Any] = {}
    batch = _batch(shapes, device)
    losses: dict[str, float] = {}
    for precision in precisions:
        step, module, optimization = _build(stage, make_context(precision), device, precision)
        module.eval()
        with torch.no_grad(), autocast(device, precision):
            losses[precision] = float(step.loss(module, batch)["loss"])
        module.train()
        if not torch.isfinite(torch.tensor(losses[precision])):
            failures.append(f"{stage} {precision}: the loss is {losses[precision]}")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        optimization.micro_step(step, module, batch)  # warm-up (kernels, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(shapes.steps):
            terms = optimization.micro_step(step, module, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        out[f"{precision}_examples_per_s"] = round(shapes.steps * shapes.batch / seconds, 2)
        out[f"{precision}_loss"] = losses[precision]
        if not torch.isfinite(terms["loss"].detach()).all():
            failures.append(f"{stage} {precision}: a training step's loss is not finite")
        if not _on_device(module, optimization.optimizer, device):
            failures.append(f"{stage} {precision}: a parameter or optimizer state is not on {device}")
        if device.type == "cuda":
            out[f"{precision}_peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
        del step, module, optimization
    for precision, tolerance in TOLERANCE.items():
        if precision in losses and "fp32" in losses:
            relative = abs(losses[precision] - losses["fp32"]) / max(abs(losses["fp32"]), 1e-12)
            out[f"{precision}_loss_relative_to_fp32"] = round(relative, 5)
            if relative > tolerance:
                failures.append(f"{stage} {precision}: loss {losses[precision]:.5f} vs fp32 {losses['fp32']:.5f} "
                                f"(relative {relative:.4f} > {tolerance})")

    # accumulation: 2 × B/2 with grad_accum_steps=2 == one batch of B (fp32, eval mode: no dropout)
    one = _build(stage, make_context("fp32"), device, "fp32")
    two = _build(stage, make_context("fp32", accum=2), device, "fp32", accum=2)
    seen: list[list[torch.Tensor]] = []
    for step, module, optimization in (one, two):
        module.eval()
        optimization.optimizer.register_step_pre_hook(
            lambda opt, *_: seen.append([p.grad.detach().clone() for g in opt.param_groups for p in g["params"]
                                         if p.grad is not None]))
    one[2].micro_step(one[0], one[1], batch)
    two[2].micro_step(two[0], two[1], _half(batch, 0))
    two[2].micro_step(two[0], two[1], _half(batch, 1))
    largest = max(float(g.abs().max()) for g in seen[0])
    accum = _max_diff(seen[0], seen[1]) / max(largest, 1e-12)
    out["accumulation_relative_grad_diff"] = accum
    if accum > ACCUM_TOLERANCE:
        failures.append(f"{stage}: the gradient of 2 × {shapes.batch // 2} accumulated differs from one batch of "
                        f"{shapes.batch}'s by {accum:.2e} of its largest entry > {ACCUM_TOLERANCE}")

    # resume: save after one step, load into a fresh step on the device, the next step equals the uninterrupted one
    step, module, optimization = one
    folder = root / f"{stage}-checkpoint"
    folder.mkdir()
    step.save(folder)
    save_training_state(folder, optimization.optimizer, {"epoch": 0}, optimization.scaler)
    fresh = _build(stage, make_context("fp32"), device, "fp32")
    fresh[0].load(folder)
    load_training_state(folder, fresh[2].optimizer, fresh[2].scaler)
    fresh[1].eval()
    if not _on_device(fresh[1], fresh[2].optimizer, device):
        failures.append(f"{stage}: the resumed optimizer state is not on {device}")
    next_batch = _batch(shapes, device, seed=1)
    optimization.micro_step(step, module, next_batch)
    fresh[2].micro_step(fresh[0], fresh[1], next_batch)
    resumed = _max_diff(_params(module), _params(fresh[1]))
    out["resume_max_param_diff"] = resumed
    if resumed > RESUME_TOLERANCE:
        failures.append(f"{stage}: the step after save → load differs by {resumed:.2e} > {RESUME_TOLERANCE}")
    return out, failures


def _estimates(names: list[str], shapes: Shapes, precision: str) -> dict[str, float]:
    config = load_config(names[0])
    teacher = encoder_shape(config)
    student_config = load_config(names[0], num_hidden_layers=shapes.student_layers)
    student = encoder_shape(student_config)
    co = cofinetune_memory([teacher] * shapes.teachers, shapes.batch, shapes.length, precision, False)
    di = distill_memory(student, shapes.student_layers, [teacher] * shapes.teachers, list(range(shapes.teachers)),
                        shapes.batch, shapes.length, precision, cached=False)
    return {"cofinetune": round(co.total / 1e9, 3), "distill": round(di.total / 1e9, 3)}


def run(tiny: bool, cpu: bool, precisions: list[str] | None = None) -> dict[str, Any]:
    """Every check on this machine's CUDA device (``cpu``: on the CPU); the report ``main`` prints."""
    quiet_transformers()
    failures: list[str] = []
    if cpu:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        return {"ok": False, "failures": ["no CUDA device is visible (torch.cuda.is_available() is False); "
                                          "run with --cpu to check the CPU"], "device": "none"}
    shapes = Shapes.tiny() if tiny else Shapes.paper()
    if precisions is None:
        precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    started = time.time()
    report: dict[str, Any] = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "shapes": shapes.__dict__, "precisions": precisions, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="mtbert-device-check-") as tmp:
        root = Path(tmp)
        names = _random_models(root, shapes)

        def cofinetune_context(precision: str, accum: int = 1):
            return _context(names, shapes, precision, accum)

        def distill_context(precision: str, accum: int = 1):  # teachers on the fly from the saved ensemble
            maps = [layer_map(shapes.student_layers, shapes.teacher_layers) for _ in names]
            return _context(names, shapes, precision, accum).with_updates(
                teachers_checkpoint=str(root / "teachers"), teacher_widths=[shapes.width] * len(names),
                teacher_depths=[shapes.teacher_layers] * len(names), layer_maps=maps)

        for stage, make_context in (("cofinetune", cofinetune_context), ("distill", distill_context)):
            if stage == "distill":  # the student learns from a co-finetuned ensemble's layout on disk
                ensemble = _stage_step("cofinetune", cofinetune_context("fp32"))
                ensemble.build(torch.device("cpu"))
                ensemble.model.save_pretrained(root / "teachers")
            figures, stage_failures = check_stage(stage, make_context, shapes, device, precisions, root)
            report["stages"][stage] = figures
            failures += stage_failures
        if device.type == "cuda":
            report["memory_estimate_gb"] = {p: _estimates(names, shapes, p) for p in precisions}
    report["seconds"] = round(time.time() - started, 1)
    report["ok"] = not failures
    report["failures"] = failures
    return report
