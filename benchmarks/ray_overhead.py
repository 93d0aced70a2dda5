"""Distillation epochs inside a 1-worker ``TorchTrainer`` vs the same loop in plain PyTorch.

Both sides run ``mtbert_ray.core.steps.distill.DistillStep`` through ``train.loop.Optimization`` over the same
rows (the teacher cache of the benchmark experiment, logits only), with the same ``PadCollate``, batch
size, seed and 2 CPU threads, for ``--epochs`` epochs. The Ray side is the real stage 3 on a 1-worker
``TorchTrainer`` (``resources.execution: trainer``, ``Experiment.distill``):
batches come from Ray Data (``get_dataset_shard().iter_torch_batches``, local shuffle); its epoch
times are the ``train_seconds`` the loop reports for each epoch (the stage's ``history.jsonl``).
The plain side reads the Parquet rows with pyarrow and cuts seeded-permutation batches.

The figure compares steady-state epochs (the median of epochs 2..E on each side). Start-up is
reported separately: ``fit()`` wall time minus the epochs and evaluation passes, and the extra
time of each side's first epoch (Ray Data starting its streaming pipeline; torch's first
allocations, which the plain side pays too). Repeats are interleaved; medians.

Last line: ``ray_overhead_ratio=<Ray steady epoch / plain steady epoch>`` (target ≤ 1.10).
"""
from __future__ import annotations

import argparse
import time

from _common import THREADS, experiment, header, median, plain_batches, plain_step, prepared, stage3_history, steady


def plain_epochs(exp) -> list[float]:
    """Seconds of each training pass of ``distill.epochs`` epochs in plain PyTorch (the Ray loop without Ray)."""
    step, module, optimization = plain_step(exp.ctx)
    collate = step.collate("train")
    seconds = []
    for epoch in range(exp.config.distill.epochs):
        started = time.perf_counter()
        module.train()
        for batch in plain_batches(exp.ctx.cache.files["train"], None, exp.config.distill.batch_size, collate, exp.config.seed + epoch):
            optimization.micro_step(step, module, batch)
        seconds.append(time.perf_counter() - started)
    return seconds


def ray_epochs(exp) -> tuple[list[float], float, list[float]]:
    """(train_seconds per epoch, start-up seconds, seconds waiting for Ray Data batches per epoch)
    of the real stage 3 in a fresh run folder."""
    wall, history = stage3_history("ray_overhead", exp)
    train = [h["train_seconds"] for h in history]
    startup = wall - sum(train) - sum(h["eval_seconds"] for h in history)
    return train, startup, [h["data_wait_seconds"] for h in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the figure uses epochs 2..E")
    parser.add_argument("--limit-train", type=int, default=1000)
    args = parser.parse_args()
    header("ray_overhead: distillation epochs, 1-worker TorchTrainer vs plain PyTorch")
    exp = prepared(experiment(limit_train=args.limit_train, distill={"epochs": args.epochs},
                              resources={"num_workers": 1, "cpus_per_worker": THREADS, "execution": "trainer"}))
    cfg, data = exp.config, exp.ctx.data

    ray_steady, ray_first, startup_s, wait_s, plain_steady, plain_first = [], [], [], [], [], []
    for r in range(args.repeats):
        epochs, startup, waits = ray_epochs(exp)
        plain = plain_epochs(exp)
        ray_steady.append(steady(epochs))
        ray_first.append(epochs[0])
        startup_s.append(startup)
        wait_s.append(steady(waits))
        plain_steady.append(steady(plain))
        plain_first.append(plain[0])
        print(f"repeat {r + 1}: ray epochs {' '.join(f'{s:.2f}' for s in epochs)} s (waiting for Ray Data batches "
              f"{' '.join(f'{w:.2f}' for w in waits)} s; fit() start-up + teardown {startup:.1f} s)  "
              f"plain epochs {' '.join(f'{s:.2f}' for s in plain)} s", flush=True)
    ray_s, plain_s = median(ray_steady), median(plain_steady)
    print(f"{data.rows['train']} training rows, batch {cfg.distill.batch_size}: steady-state epoch ray {ray_s:.2f} s "
          f"(of which waiting for batches {median(wait_s):.2f} s), plain {plain_s:.2f} s; "
          f"first epoch ray {median(ray_first):.2f} s, plain {median(plain_first):.2f} s "
          f"(first-epoch ratio {median(ray_first) / median(plain_first):.3f}); "
          f"TorchTrainer start-up + teardown {median(startup_s):.1f} s per fit()")
    print(f"ray_overhead_ratio={ray_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
