"""Distillation epochs inside a 1-worker ``TorchTrainer`` vs the same loop in plain PyTorch.

Both sides run ``mtbert_ray.train.distill.DistillStep.train_step`` over the same rows (the teacher
cache of the benchmark experiment, logits only), with the same ``PadCollate``, batch size, seed and
2 CPU threads, for ``--epochs`` epochs. The Ray side is the real stage 3 (``pipeline.run_distillation``):
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

from _common import THREADS, experiment, header, median, plain_batches, prepared_stages, stage3_history, steady


def plain_epochs(cfg, data, teachers, cache, layer_maps) -> list[float]:
    """Seconds of each training pass of ``distill.epochs`` epochs in plain PyTorch (the Ray loop without Ray)."""
    import torch

    from mtbert_ray.data.loader import view_columns
    from mtbert_ray.pipeline import cache_files
    from mtbert_ray.train.common import seed_everything
    from mtbert_ray.train.distill import DistillStep, distill_collates, setup_distillation

    torch.set_num_threads(THREADS)
    seed_everything(cfg.seed)
    use_cache = cache is not None
    setup = setup_distillation(cfg, data, teachers.checkpoint, use_cache, torch.device("cpu"))
    collate, _ = distill_collates(cfg, data, setup.meta, use_cache)
    aliases = [data.model_tokenizer[t] for t in cfg.teachers]
    student_alias = data.model_tokenizer[cfg.student.init_from]
    step = DistillStep(cfg, aliases, student_alias, data.num_labels, cfg.student.num_layers, layer_maps, setup.ensemble)
    files = cache_files(cache, "train") if use_cache else data.splits["train"]
    columns = None if use_cache else view_columns([*aliases, student_alias])
    seconds = []
    for epoch in range(cfg.distill.epochs):
        started = time.perf_counter()
        setup.module.train()
        for batch in plain_batches(files, columns, cfg.distill.batch_size, collate, cfg.seed + 1000 + epoch):
            step.train_step(setup.module, setup.optimizer, batch)
        seconds.append(time.perf_counter() - started)
    return seconds


def ray_epochs(cfg, data, teachers, cache, layer_maps) -> tuple[list[float], float, list[float]]:
    """(train_seconds per epoch, start-up seconds, seconds waiting for Ray Data batches per epoch)
    of the real stage 3 in a fresh run folder."""
    wall, history = stage3_history("ray_overhead", cfg, data, teachers, cache, layer_maps)
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
    cfg, data, teachers, cache, maps = prepared_stages(experiment(limit_train=args.limit_train, distill={"epochs": args.epochs}))

    ray_steady, ray_first, startup_s, wait_s, plain_steady, plain_first = [], [], [], [], [], []
    for r in range(args.repeats):
        epochs, startup, waits = ray_epochs(cfg, data, teachers, cache, maps)
        plain = plain_epochs(cfg, data, teachers, cache, maps)
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
