"""Trial efficiency of a sweep: how much of each trial's time is training and evaluation, per execution path.

A shortened copy of the README's demo study (tune_spaces/demo.yaml: two MiniLM teachers, 1,500 Rotten
Tomatoes sentences, cached hidden states, a 2-layer student, one distillation epoch per trial) runs as a
3-trial grid over the temperature twice in one run — with the stages in the trial's own process
(``resources.execution: in_process``, the default for one worker without a GPU) and on a 1-worker
``TorchTrainer`` (``trainer``). The co-finetuned teachers and their cache are built first and shared by
both, so trials differ only in how they run stage 3.

trial efficiency = Σ over trials of (train + eval seconds of its distillation epochs — validation, and test
when the epoch is selected — from the stage's history) ÷ Σ of the trials' wall seconds (Tune's
``time_total_s``). Target ≥ 0.85 in process. The training seconds include waiting for input batches; the
same figure without those waits is printed beside it.

Last line: ``trial_efficiency_in_process=<e> trial_efficiency_trainer=<e>``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, header, storage

TEMPERATURES = [1.0, 2.0, 4.0]


def sweep(path: str, name: str, results: Path, extra: list[str], temperatures: list[float] = TEMPERATURES) -> float:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mtbert_ray.sweep", "--space", path, "--storage", str(results),
                          "--name", name, "--set", "search.searcher=grid", "--set", "search.num_samples=1",
                          "--set", f"space={{loss.temperature: {{grid: {temperatures}}}}}", *extra],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sweep {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - started


def efficiency(experiment_dir: Path) -> tuple[float, float, float, list[str]]:
    """(efficiency, Σ work seconds, Σ wall seconds, per-trial lines) of a finished sweep folder."""
    from ray.tune import ExperimentAnalysis

    from mtbert_ray.core.history import HISTORY_FILE, read_history

    work = wall = busy = 0.0
    lines = []
    for trial in ExperimentAnalysis(str(experiment_dir)).trials:
        last = trial.last_result
        history = read_history(Path(last["run_dir"]) / "distill" / HISTORY_FILE, last_per_epoch=True)
        w = sum(h["train_seconds"] + h["eval_seconds"] + h.get("test_eval_seconds", 0.0) for h in history)
        waited = sum(h.get("data_wait_seconds", 0.0) for h in history)
        busy += w - waited
        first_wait = history[0]["data_wait_seconds"] if history else float("nan")
        work, wall = work + w, wall + last["time_total_s"]
        lines.append(f"    {trial.trial_id}: wall {last['time_total_s']:.1f} s, train + eval {w:.1f} s "
                     f"(first epoch waited {first_wait:.2f} s for its first batches)")
    lines.append(f"    without the waits for input batches: Σ {busy:.1f} s → {busy / wall:.3f} of the trials' wall time")
    return work / wall, work, wall, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(REPO / "tune_spaces" / "demo.yaml"))
    args = parser.parse_args()
    header("sweep_overhead: trial efficiency of the demo study, in process vs a 1-worker TorchTrainer")
    results = storage() / "sweep_overhead"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Stages 1 and 2 once (not part of any trial's figure): a one-trial sweep of the same base experiment.
    sweep(args.space, f"warmup-{stamp}", results, [], temperatures=[1.0])
    figures = {}
    for execution in ("in_process", "trainer"):
        name = f"{execution}-{stamp}"
        seconds = sweep(args.space, name, results, ["--set", f"resources.execution={execution}"])
        eff, work, wall, lines = efficiency(results / "sweeps" / name)
        figures[execution] = eff
        print(f"{execution}: {len(TEMPERATURES)} trials, sweep wall {seconds:.0f} s; Σ trial wall {wall:.1f} s, "
              f"Σ train + eval {work:.1f} s → trial efficiency {eff:.3f}", flush=True)
        print("\n".join(lines), flush=True)
    print(f"trial_efficiency_in_process={figures['in_process']:.3f} trial_efficiency_trainer={figures['trainer']:.3f}")


if __name__ == "__main__":
    main()
