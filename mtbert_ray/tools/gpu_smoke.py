"""``python -m mtbert_ray.tools.gpu_smoke RUN_DIR`` — the verdict of ``scripts/gpu_smoke.sh`` on the run it made.

Prints per stage and epoch the throughput and peak GPU memory, and exits 1 naming every failure of what matters on a
first GPU run: the distillation did not resume after the injected fault, a loss that is not finite, a student at or
below chance on test, an epoch that used no GPU memory (a worker on the CPU), a missing test score.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

CHANCE_MARGIN = 0.02  # test accuracy must beat chance (the majority class's share, or 1 / classes) by this much


def _history(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def smoke_failures(run: Path) -> tuple[list[str], list[str]]:
    """(failures, table lines) of a finished smoke run folder."""
    result = json.loads((run / "result.json").read_text())
    co = Path(result["stages"]["cofinetune"]["checkpoint"])
    stages = {"co-finetune": _history(co.parent / "history.jsonl"), "distill": _history(run / "distill" / "history.jsonl")}
    failures: list[str] = []
    table = [f"{'stage':<12} {'epoch':>5} {'start':>5} {'examples/s':>11} {'peak GPU GB':>12}"]
    for stage, rows in stages.items():
        if not rows:
            failures.append(f"{stage}: no epoch in its history")
        for row in rows:
            gpu = row.get("gpu_memory_peak_gb")
            table.append(f"{stage:<12} {row.get('epoch', '?'):>5} {row.get('start_epoch', '?'):>5} "
                         f"{row.get('train_examples_per_s', 0):>11.1f} {gpu if gpu is not None else float('nan'):>12.2f}")
            if not gpu:
                failures.append(f"{stage} epoch {row.get('epoch')}: no GPU memory used (a worker on the CPU?)")
            losses = {k: v for k, v in row.items() if k.startswith("train_") and k.endswith("loss") and isinstance(v, float)}
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                failures.append(f"{stage} epoch {row.get('epoch')}: {', '.join(bad)} not finite")
    if not any(r.get("start_epoch") == 1 for r in stages["distill"]):
        failures.append("distill: no epoch resumed from the epoch-1 checkpoint after the injected fault")
    test = (result["stages"]["distill"].get("test") or {})
    accuracy = test.get("accuracy")
    data = result.get("data") or {}
    counts = (data.get("labels") or {}).get("test") or {}  # label counts when the run recorded them, else 1 / classes
    classes = max(len(data.get("label_names") or []), 2)
    majority = max(counts.values()) / sum(counts.values()) if counts and sum(counts.values()) else 1 / classes
    if accuracy is None:
        failures.append("distill: no test accuracy")
    elif accuracy < majority + CHANCE_MARGIN:
        failures.append(f"distill: test accuracy {accuracy:.4f} is at chance (majority class {majority:.4f})")
    table.append(f"student: validation {result['stages']['distill']['metrics']} test {test}")
    return failures, table


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m mtbert_ray.tools.gpu_smoke RUN_DIR", file=sys.stderr)
        sys.exit(2)
    failures, table = smoke_failures(Path(args[0]))
    print("\n".join(table))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
