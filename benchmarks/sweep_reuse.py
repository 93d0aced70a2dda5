"""Wall time of a small teacher-subset grid with co-finetuning reused across trials vs redone per trial.

The same sweep is run twice through the command line (``python -m mtbert_ray.sweep``), each in its
own empty results folder: a grid over the teacher subsets {MiniLM-L6}, {MiniLM-L3} × two
temperatures (4 trials, 2 at a time, 1 CPU per Train worker, 300 training sentences):

- reused (the default): trials with the same teacher set share one co-finetuning run and its teacher cache;
- redone: ``--set cofinetune.reuse=false`` — every trial trains its teachers afresh, as a tool
  without keyed stages does.

The number of co-finetuning runs is counted from the stage folders each sweep leaves behind.
Last line: ``sweep_reuse_speedup=<redone wall time / reused wall time>``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import MINILM_L3, MINILM_L6, REPO, experiment, header, storage


def space_file(folder: Path, limit_train: int) -> Path:
    base = experiment(limit_train=limit_train, resources={"num_workers": 1, "cpus_per_worker": 1})
    path = folder / "sweep_reuse.yaml"
    path.write_text(yaml.safe_dump({
        "name": "sweep-reuse",
        "experiment": base,
        "teacher_pool": {"minilm6": MINILM_L6, "minilm3": MINILM_L3},
        "space": {"teachers": {"grid": ["minilm6", "minilm3"]}, "loss.temperature": {"grid": [1.0, 2.0]}},
        "search": {"searcher": "grid", "max_concurrent_trials": 2},
    }))
    return path


def run_sweep(space: Path, results: Path, *extra: str) -> tuple[float, int, int]:
    """(wall seconds, trials finished, co-finetuning runs) of one sweep in a fresh results folder."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mtbert_ray.sweep", "--space", str(space), "--storage", str(results), *extra],
                         cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"sweep failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    trials = len(list((results / "sweeps" / "sweep-reuse" / "runs").glob("*/result.json")))
    cofinetunes = len(list((results / "stages" / "cofinetune").glob("*/mtbert_stage.json")))
    return wall, trials, cofinetunes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-train", type=int, default=300)
    args = parser.parse_args()
    header("sweep_reuse: teacher-subset grid, co-finetuning reused vs redone per trial")
    with tempfile.TemporaryDirectory(dir=storage()) as tmp:
        tmp = Path(tmp)
        space = space_file(tmp, args.limit_train)
        # tokenized shards are shared by both arms (the data cache is not what is measured)
        reused = run_sweep(space, tmp / "reused")
        redone = run_sweep(space, tmp / "redone", "--set", "cofinetune.reuse=false")
    for name, (wall, trials, cofinetunes) in (("reused", reused), ("redone", redone)):
        print(f"{name:>7}: {trials} trials, {cofinetunes} co-finetuning runs, wall {wall:.0f} s", flush=True)
    print(json.dumps({"reused_cofinetunes": reused[2], "redone_cofinetunes": redone[2], "trials": reused[1]}))
    print(f"sweep_reuse_speedup={redone[0] / reused[0]:.2f}")


if __name__ == "__main__":
    main()
