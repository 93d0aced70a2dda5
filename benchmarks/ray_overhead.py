"""One distillation epoch inside a 1-worker ``TorchTrainer`` vs the same loop in plain PyTorch.

Both sides run ``mtbert_ray.train.distill.DistillStep.train_step`` over the same rows (the teacher
cache of the benchmark experiment, logits only), with the same ``PadCollate``, batch size, seed and
2 CPU threads. The Ray side is the real stage 3 (``pipeline.run_distillation``): batches come from
Ray Data (``get_dataset_shard().iter_torch_batches``, local shuffle); its epoch time is the
``train_seconds`` the loop reports, and its start-up (``fit()`` wall time minus the epoch and the
evaluation pass) is reported separately. The plain side reads the Parquet rows with pyarrow and
cuts seeded-permutation batches. Repeats are interleaved; medians.

Last line: ``ray_overhead_ratio=<Ray epoch / plain epoch>`` (target ≤ 1.10).
"""
from __future__ import annotations

import argparse
import time

from _common import THREADS, experiment, header, median, plain_batches, prepared_stages, stage3_metrics


def plain_epoch_seconds(cfg, data, teachers, cache, layer_maps) -> float:
    """The training pass of one epoch in plain PyTorch (what the Ray loop does, without Ray)."""
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
    started = time.perf_counter()
    setup.module.train()
    for batch in plain_batches(files, columns, cfg.distill.batch_size, collate, cfg.seed + 1000):
        step.train_step(setup.module, setup.optimizer, batch)
    return time.perf_counter() - started


def ray_epoch(cfg, data, teachers, cache, layer_maps) -> tuple[float, float, float]:
    """(epoch train_seconds, start-up seconds, seconds the loop waited for Ray Data batches) of the
    real stage 3 in a fresh run folder."""
    wall, m = stage3_metrics("ray_overhead", cfg, data, teachers, cache, layer_maps)
    return m["train_seconds"], wall - m["train_seconds"] - m["eval_seconds"], m["data_wait_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=1000)
    args = parser.parse_args()
    header("ray_overhead: one distillation epoch, 1-worker TorchTrainer vs plain PyTorch")
    cfg, data, teachers, cache, maps = prepared_stages(experiment(limit_train=args.limit_train))

    ray_s, startup_s, wait_s, plain_s = [], [], [], []
    for r in range(args.repeats):
        epoch, startup, wait = ray_epoch(cfg, data, teachers, cache, maps)
        ray_s.append(epoch)
        startup_s.append(startup)
        wait_s.append(wait)
        plain_s.append(plain_epoch_seconds(cfg, data, teachers, cache, maps))
        print(f"repeat {r + 1}: ray epoch {ray_s[-1]:.2f} s (of which waiting for Ray Data batches {wait:.2f} s; "
              f"start-up {startup:.1f} s)  plain epoch {plain_s[-1]:.2f} s", flush=True)
    print(f"{data.rows['train']} training rows, batch {cfg.distill.batch_size}: ray {median(ray_s):.2f} s/epoch, "
          f"plain {median(plain_s):.2f} s/epoch; TorchTrainer start-up + teardown {median(startup_s):.1f} s per fit()")
    print(f"ray_overhead_ratio={median(ray_s) / median(plain_s):.3f}")


if __name__ == "__main__":
    main()
