"""How large a teacher cache will be, before it is built (stage 2) or planned (the dry run): one formula for both."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import ExperimentConfig
from mtbert_ray.data.floats import STORED_BYTES

INDEX_BYTES_PER_TOKEN = 4 * 5  # the student's int32 token columns (ids, mask, specials, two offsets)


def cache_row_bytes(cfg: ExperimentConfig, tokens: float, teacher_widths: Sequence[int], num_labels: int, hidden: bool) -> float:
    """Bytes of one cached row: tokens × (index columns + [Σ_i width_i × K × dtype bytes]) + N × C × 4 (the logits of
    the N teachers); K = ``student.num_layers``, dtype = ``cache.dtype``."""
    states = sum(teacher_widths) * cfg.student.num_layers * STORED_BYTES[cfg.cache.dtype] if hidden else 0
    return tokens * (INDEX_BYTES_PER_TOKEN + states) + len(cfg.teachers) * num_labels * 4


@dataclass
class CacheEstimate:
    rows: int
    tokens_per_row: float
    bytes: float
    hidden: bool
    formula: str

    @property
    def gb(self) -> float:
        return self.bytes / 1e9


def estimate_cache(cfg: ExperimentConfig, split_rows: dict[str, int], mean_tokens: dict[str, float],
                   teacher_widths: Sequence[int], num_labels: int, hidden: bool) -> CacheEstimate:
    """rows × ``cache_row_bytes`` for the cached splits (their rows and mean student tokens per row), in words too."""
    rows = sum(split_rows.values())
    tokens = sum(n * mean_tokens[s] for s, n in split_rows.items()) / max(rows, 1)
    dtype, layers = cfg.cache.dtype, cfg.student.num_layers
    formula = f"{rows:,} rows × {tokens:.1f} tokens"
    if hidden:
        formula += (f" × (Σ teacher widths {sum(teacher_widths)} × {layers} student layers × {STORED_BYTES[dtype]} bytes)")
    per_row = cache_row_bytes(cfg, tokens, teacher_widths, num_labels, hidden)
    return CacheEstimate(rows, tokens, rows * per_row, hidden, formula)


def check_cache_size(cfg: ExperimentConfig, estimate: CacheEstimate) -> None:
    """Refuse (one line, with the switches that shrink it) a cache larger than ``cache.max_gb``."""
    if estimate.gb <= cfg.cache.max_gb:
        return
    shrink = ["cache.hidden: false (logits only)"] if estimate.hidden else []
    if estimate.hidden and cfg.cache.dtype == "float32":
        shrink.append("cache.dtype: float16")
    shrink += ["a smaller data.max_length or student.num_layers", "cache.enabled: false (teachers on the fly)",
               f"or raise cache.max_gb (now {cfg.cache.max_gb:g})"]
    raise ConfigError(
        f"cache: the teacher cache would take ~{estimate.gb:,.1f} GB ({estimate.formula}), more than cache.max_gb="
        f"{cfg.cache.max_gb:g}; shrink it with {', '.join(shrink)}"
    )
