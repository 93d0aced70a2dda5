"""Will a stage fit on one GPU? The arithmetic, per stage and per GPU worker, against 24 / 40 / 80 / 141 GB cards.

Reasoned, not measured (no GPU here; ``scripts/gpu_smoke.sh`` reports the peak that a run really reaches). For P
trainable parameters in fp32 master weights with Adam, and autocast in ``resources.precision``:

    weights 4·P  +  gradients 4·P  +  Adam moments 8·P  +  autocast copies 2·P (bf16 / fp16 only)
    frozen weights (teachers on the fly in stage 3): 4·P_frozen (+ 2·P_frozen under autocast)
    activations per Transformer layer, micro-batch b, length s, width h, heads a (Korthikanti et al. 2022, 16-bit,
    no recomputation): s·b·h·(34 + 5·a·s/h) bytes — ×2 in fp32; with gradient checkpointing 2·s·b·h per layer plus
    one layer's full set
    hidden-loss tensors (stage 3): b·s·(Σ_i w_i + h_s)·K·4 bytes (teacher states widened to fp32, the student's states)
    CUDA context and allocator slack: CUDA_CONTEXT_GB

The sequence length is ``data.max_length`` (batches are padded to their longest row, so this is the worst case).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModel

from mtbert_ray.config import micro_batch, uses_cache
from mtbert_ray.models.hub import load_config

CARDS_GB = (24, 40, 80, 141)  # A10G / L4, A100-40, A100 / H100-80, H200
CUDA_CONTEXT_GB = 1.0  # the CUDA context (~0.3–0.5 GB) and the caching allocator's fragmentation, rounded up
GB = 1e9


@dataclass(frozen=True)
class EncoderShape:
    params: int
    layers: int
    hidden: int
    heads: int


@dataclass
class StageMemory:
    stage: str
    parts: dict[str, float] = field(default_factory=dict)  # bytes

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items())
        fits = [c for c in CARDS_GB if self.total <= c * GB]
        where = f"fits a {fits[0]} GB card" if fits else f"fits no card up to {CARDS_GB[-1]} GB"
        return f"{self.stage}: ~{self.total / GB:.1f} GB per GPU worker ({parts}); {where}"


def encoder_shape(config) -> EncoderShape:
    """Parameters counted on the meta device (no memory, no download), layers, width and heads of a model config."""
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    return EncoderShape(int(params), int(config.num_hidden_layers), int(config.hidden_size), int(config.num_attention_heads))


def activation_bytes(shape: EncoderShape, layers: int, batch: int, length: int, precision: str, checkpointing: bool) -> float:
    """Bytes of the activations kept for the backward pass of ``layers`` layers (module docstring)."""
    per_layer = length * batch * shape.hidden * (34 + 5 * shape.heads * length / shape.hidden)
    if precision == "fp32":
        per_layer *= 2
    if checkpointing:
        return layers * 2 * length * batch * shape.hidden + per_layer
    return layers * per_layer


def _optimised(params: int, precision: str) -> dict[str, float]:
    out = {"weights": 4.0 * params, "gradients": 4.0 * params, "Adam": 8.0 * params}
    if precision != "fp32":
        out["autocast copies"] = 2.0 * params
    return out


def cofinetune_memory(teachers: list[EncoderShape], batch: int, length: int, precision: str, checkpointing: bool) -> StageMemory:
    """Stage 1: every teacher trainable, one optimizer; activations of all of them (they run on the same batch)."""
    parts = _optimised(sum(t.params for t in teachers), precision)
    parts["activations"] = sum(activation_bytes(t, t.layers, batch, length, precision, checkpointing) for t in teachers)
    parts["CUDA context"] = CUDA_CONTEXT_GB * GB
    return StageMemory("co-finetuning", parts)


def distill_memory(student: EncoderShape, student_layers: int, teachers: list[EncoderShape], hidden: list[int],
                   batch: int, length: int, precision: str, cached: bool) -> StageMemory:
    """Stage 3: the K-layer student (``student``: the shape of the truncated encoder) and W_ij trainable; the teachers
    frozen on the GPU unless the cache replaces them; the hidden loss's teacher and student states."""
    projections = sum(student_layers * (teachers[i].hidden + 1) * student.hidden for i in hidden)
    parts = _optimised(student.params + projections, precision)
    if not cached:
        frozen = sum(t.params for t in teachers)
        parts["frozen teachers"] = (4.0 + (2.0 if precision != "fp32" else 0.0)) * frozen
    parts["activations"] = activation_bytes(student, student_layers, batch, length, precision, False)
    if hidden:
        parts["hidden-loss states"] = batch * length * (sum(teachers[i].hidden for i in hidden) + student.hidden) * student_layers * 4.0
    parts["CUDA context"] = CUDA_CONTEXT_GB * GB
    return StageMemory("distillation", parts)


def advice(estimate: StageMemory, section: str) -> str | None:
    """A line naming the settings that shrink a stage that fits no card (None when it fits one)."""
    if estimate.total <= CARDS_GB[-1] * GB:
        return None
    return (f"{estimate.stage} needs ~{estimate.total / GB:.0f} GB per GPU worker, more than a {CARDS_GB[-1]} GB card: raise "
            f"{section}.grad_accum_steps or resources.num_workers (a smaller micro-batch), lower data.max_length, "
            + ("set cofinetune.gradient_checkpointing: true, " if section == "cofinetune" else "enable the teacher cache, ")
            + "or use resources.precision: bf16")


def memory_lines(cfg) -> list[str]:
    """The dry run's lines for an ``ExperimentConfig`` on GPUs: each stage's estimate, and advice where one fits no card."""
    r, length = cfg.resources, cfg.data.max_length
    teachers = [encoder_shape(load_config(t, trust_remote_code=cfg.trust_remote_code)) for t in cfg.teachers]
    student = encoder_shape(load_config(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code,
                                        num_hidden_layers=cfg.student.num_layers))
    chosen = cfg.loss.hidden_teachers
    hidden = [] if not cfg.loss.hidden else (
        [cfg.teachers.index(t) for t in chosen] if isinstance(chosen, list) else list(range(len(cfg.teachers))))
    estimates = [
        (cofinetune_memory(teachers, micro_batch(cfg, "cofinetune"), length, r.precision, cfg.cofinetune.gradient_checkpointing),
         "cofinetune"),
        (distill_memory(student, cfg.student.num_layers, teachers, hidden, micro_batch(cfg, "distill"), length, r.precision,
                        uses_cache(cfg)), "distill"),
    ]
    lines = ["GPU memory (reasoned, mtbert_ray/tools/memory_fit.py; the run's real peak is in its history as gpu_memory_peak_gb):"]
    for estimate, section in estimates:
        lines.append("  " + estimate.describe())
        note = advice(estimate, section)
        if note:
            lines.append("  warning: " + note)
    return lines
