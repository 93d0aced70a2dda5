"""Distillation epoch with teacher outputs from the stage-2 cache vs the teachers run on the fly.

Four real stage-3 runs per repeat (``pipeline.run_distillation``, 1 worker × 2 CPUs): logits only
(L_MT-Dis + L_Task) and with the hidden loss (+ L_MT-Hid), each from the cache and on the fly;
epoch time = the ``train_seconds`` the loop reports (no start-up, no evaluation) for the epochs
after the first (``--epochs``, default 2: the first epoch also pays Ray Data's pipeline start,
reported separately); interleaved, median.

The limit: the cache removes the teachers' forward pass and nothing else, so the best possible
speed-up is (teacher forward + student step) / student step, timed here component by component in
plain PyTorch on the same batches (student step from a cache batch; teacher forward as on the fly,
with the hidden states when the hidden loss is on).

Last line: ``cache_speedup_vs_limit=<speed-up ÷ limit>`` for the logits-only case (target ≥ 0.9).
"""
from __future__ import annotations

import argparse
import time

from _common import experiment, header, median, plain_batches, plain_step, prepared, stage3_history, steady, without_cache


def component_limit(exp, batches: int = 8) -> tuple[float, float, float]:
    """(teacher forward s/batch, student step s/batch, limit) from plain-PyTorch component timings."""
    from mtbert_ray.core.targets import teacher_targets
    from mtbert_ray.data.columns import view_columns

    ctx, cfg = exp.ctx, exp.config
    step, module, optimization = plain_step(ctx)
    fly_step, _, _ = plain_step(without_cache(exp))  # its build() loads the frozen teachers
    tokenizations = [*ctx.teacher_tokenizations, ctx.student_tokenization]
    fly_batches = list(plain_batches(ctx.data.splits["train"], view_columns(tokenizations), cfg.distill.batch_size,
                                     fly_step.collate("train"), 0))[:batches]
    cache_batches = list(plain_batches(ctx.cache.files["train"], None, cfg.distill.batch_size, step.collate("train"), 0))[:batches]
    hidden = ctx.layer_maps if cfg.loss.hidden else None

    def teachers_forward() -> float:
        started = time.perf_counter()
        for b in fly_batches:
            teacher_targets(fly_step.ensemble, b, ctx.teacher_tokenizations, ctx.student_tokenization, hidden)
        return (time.perf_counter() - started) / len(fly_batches)

    def student_step() -> float:
        module.train()
        started = time.perf_counter()
        for b in cache_batches:
            optimization.micro_step(step, module, b)
        return (time.perf_counter() - started) / len(cache_batches)

    teachers_forward(), student_step()  # warm-up
    t, s = [], []
    for _ in range(3):
        t.append(teachers_forward())
        s.append(student_step())
    teacher_s, student_s = median(t), median(s)
    return teacher_s, student_s, (teacher_s + student_s) / student_s


def epoch_seconds(exp, ctx=None) -> tuple[float, float, float]:
    """(steady-state train_seconds, of which waiting for input batches, first epoch's train_seconds)
    of a real stage-3 run."""
    history = stage3_history("teacher_cache", exp, ctx)[1]
    train = [h["train_seconds"] for h in history]
    return steady(train), steady([h["data_wait_seconds"] for h in history]), train[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit-train", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the figure uses epochs 2..E")
    args = parser.parse_args()
    header("teacher_cache: distillation epoch from the cache vs teachers on the fly")

    variants = {
        "logits only": experiment(limit_train=args.limit_train, distill={"epochs": args.epochs}),
        "with hidden loss": experiment(limit_train=args.limit_train, distill={"epochs": args.epochs}, loss={"hidden": True},
                                       cache={"enabled": True, "hidden": True}),
    }
    results: dict[str, dict[str, float]] = {}
    for name, raw in variants.items():
        exp = prepared(raw)
        cached_s, fly_s, wait_s, first_s = [], [], [], []
        for r in range(args.repeats):
            seconds, wait, first = epoch_seconds(exp)
            cached_s.append(seconds)
            wait_s.append(wait)
            fly, _, fly_first = epoch_seconds(exp, without_cache(exp))
            fly_s.append(fly)
            first_s.append(fly_first / first)
            print(f"{name}, repeat {r + 1}: steady-state epoch from the cache {cached_s[-1]:.2f} s, on the fly {fly_s[-1]:.2f} s "
                  f"(first epoch {first:.2f} s vs {fly_first:.2f} s)", flush=True)
        teacher_fwd, student_step, limit = component_limit(exp)
        speedup = median(fly_s) / median(cached_s)
        results[name] = {"speedup": speedup, "limit": limit}
        print(f"{name}: epoch {median(cached_s):.2f} s from the cache vs {median(fly_s):.2f} s on the fly → speed-up "
              f"{speedup:.2f}×; components: teacher forward {teacher_fwd * 1000:.0f} ms + student step "
              f"{student_step * 1000:.0f} ms per batch → limit {limit:.2f}×; speed-up / limit {speedup / limit:.2f}; "
              f"cached epoch waited {median(wait_s):.2f} s for Ray Data batches; first-epoch speed-up {median(first_s):.2f}×",
              flush=True)
    print(f"hidden_cache_speedup_vs_limit={results['with hidden loss']['speedup'] / results['with hidden loss']['limit']:.3f}")
    print(f"cache_speedup_vs_limit={results['logits only']['speedup'] / results['logits only']['limit']:.3f}")


if __name__ == "__main__":
    main()
