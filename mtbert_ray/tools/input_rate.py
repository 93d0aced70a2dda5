"""Will the input pipeline keep a GPU fed? Rows per second a GPU consumes in stage 3, against what a CPU core delivers.

Reasoned, not measured on a GPU (none here). Training one row of ``s`` tokens through a K-layer student of
non-embedding parameters N and width h costs about (Kaplan et al. 2020; attention from Korthikanti et al. 2022)

    FLOPs/row = 6·N·s  +  12·K·s²·h  (+ the hidden loss's maps W_ij: 6·s·K·Σ_i w_i·h)

so one GPU of peak P FLOP/s at a model-FLOPs utilisation u consumes  rows/s = u·P / FLOPs/row.
The CPU side is measured: ``benchmarks/input_pipeline.py`` prints the device-ready bytes per second one CPU core
turns from Parquet into padded batches (read, decode, collate); a stage-3 row is ``bytes_per_row`` of the teacher
cache (logits, and the aligned states when cached) plus its token columns. CPUs per GPU worker that keep it fed:

    ceil(rows/s × bytes_per_row / bytes_per_core_s)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: Dense bf16 peak of the GPU the arithmetic is written for (H100 SXM: 989 TFLOP/s without sparsity).
H100_BF16_FLOPS = 989e12
#: Model-FLOPs utilisation assumed for a small BERT student (well-tuned large-model training reaches ~0.4-0.5; a
#: 6-layer encoder at short sequences rarely does better).
ASSUMED_MFU = 0.4
#: Device-ready bytes per second one CPU core produces, measured by benchmarks/input_pipeline.py on the project's
#: 2-core VM: pyarrow decode + PadCollate of the mixture study's hidden-state cache, 113 MB/s (1,346 rows/s of
#: 84 kB) — an upper bound: the streamed Ray Data read delivered 21 MB/s on both cores in the same run (beside a
#: running study). Measure the nodes you train on with that script: the dry run's figure scales with it.
MEASURED_BYTES_PER_CORE_S = 113e6


@dataclass(frozen=True)
class FeedRate:
    flops_per_row: float
    gpu_rows_per_s: float
    bytes_per_row: float
    cpus_per_gpu: int

    def describe(self) -> str:
        return (f"one H100 (bf16, {ASSUMED_MFU:.0%} of peak) trains ~{self.gpu_rows_per_s:,.0f} rows/s of stage 3 "
                f"({self.flops_per_row / 1e9:,.1f} GFLOP a row); at {self.bytes_per_row / 1e3:,.1f} kB a row that is "
                f"{self.gpu_rows_per_s * self.bytes_per_row / 1e9:,.2f} GB/s of input, ~{self.cpus_per_gpu} CPU(s) per GPU "
                f"worker at best (a core decodes ~{MEASURED_BYTES_PER_CORE_S / 1e6:,.0f} MB/s, benchmarks/input_pipeline.py)")


def student_flops_per_row(params_non_embedding: int, layers: int, hidden: int, tokens: float,
                          projected_widths: tuple[int, ...] = ()) -> float:
    """Training FLOPs of one row (module docstring); ``projected_widths``: the teacher widths w_i the hidden loss maps."""
    dense = 6.0 * params_non_embedding * tokens
    attention = 12.0 * layers * tokens * tokens * hidden
    maps = 6.0 * tokens * layers * sum(projected_widths) * hidden
    return dense + attention + maps


def feed_rate(flops_per_row: float, bytes_per_row: float, bytes_per_core_s: float = MEASURED_BYTES_PER_CORE_S,
              peak_flops: float = H100_BF16_FLOPS, mfu: float = ASSUMED_MFU) -> FeedRate:
    """Rows/s one GPU consumes and the CPU cores per GPU worker that deliver them."""
    rows = mfu * peak_flops / flops_per_row
    return FeedRate(flops_per_row, rows, bytes_per_row, max(1, math.ceil(rows * bytes_per_row / bytes_per_core_s)))
