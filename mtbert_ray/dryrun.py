"""``python -m mtbert_ray.sweep --space FILE --dry-run``: what a study will run, before anything runs.

Prints the trials (grid points × seeds, or the number of sampled trials), the distinct co-finetuning
runs and teacher caches the trials share (each cache with its estimated size on disk), what each trial
asks Ray for, and the most GPUs the study holds at once — what a user sizing a cluster needs and Tune
does not show. It reads the data source (row counts, and token lengths of a sample with the student's
tokenizer) and the models' ``config.json`` files; it trains nothing and writes nothing.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from mtbert_ray.config import ExperimentConfig, head_teacher
from mtbert_ray.data.floats import STORED_BYTES
from mtbert_ray.space import Space

SAMPLE_ROWS = 2000
SAMPLED = "(sampled)"


@dataclass
class PlannedTrial:
    params: dict[str, Any]
    config: ExperimentConfig
    sampled: list[str]  # space keys whose value Tune samples


def planned_trials(space: Space) -> list[PlannedTrial]:
    """Every trial the study will start: the grid (seeds included) × num_samples; sampled dimensions shown as sampled."""
    grid: dict[str, list[Any]] = {}
    sampled: list[str] = []
    for key, dim in space.spec.space.items():
        if dim.kind == "grid":
            grid[key] = space.dimension_values(key, dim)
        else:
            sampled.append(key)
    if "seed" not in space.spec.space:
        grid["seed"] = list(space.search.seeds)
    trials = []
    for _ in range(space.search.num_samples):
        for combo in itertools.product(*grid.values()):
            params = dict(zip(grid, combo))
            probe = {**params, **{k: space.spec.space[k].examples()[0] for k in sampled}}
            config = space.trial_config(probe)
            trials.append(PlannedTrial({**params, **{k: SAMPLED for k in sampled}}, config, sampled))
    return trials


UNLABELED_FIELDS = {"unlabeled", "limit_unlabeled"}  # stage 3's data only: the teachers never see it


def _cofinetune_identity(cfg: ExperimentConfig, sampled: list[str], teachers: tuple[str, ...] | None = None) -> tuple:
    varies = any(k.startswith(("cofinetune.", "data.")) or k in ("teachers", "seed") for k in sampled)
    return (teachers or tuple(cfg.teachers),
            cfg.cofinetune.model_dump_json(exclude={"reuse", "grad_accum_steps", "gradient_checkpointing"}),
            cfg.seed, cfg.resources.num_workers, cfg.resources.precision, cfg.data.model_dump_json(exclude=UNLABELED_FIELDS),
            varies)


def _cache_identity(cfg: ExperimentConfig, sampled: list[str]) -> tuple | None:
    from mtbert_ray.stages import uses_cache
    from mtbert_ray.trial_needs import ConfigView

    if not uses_cache(ConfigView(cfg)):
        return None
    hidden = cfg.cache.hidden and cfg.loss.hidden
    return (_cofinetune_identity(cfg, sampled), cfg.student.init_from,
            cfg.student.num_layers if hidden else None, cfg.cache.dtype if hidden else None,
            cfg.data.unlabeled, cfg.data.limit_unlabeled)


def _data_shape(cfg: ExperimentConfig) -> tuple[int, int, float]:
    """(labelled training rows, unlabelled rows, mean tokens per example with the student's tokenizer on a sample of up
    to SAMPLE_ROWS of both)."""
    import pandas as pd

    from mtbert_ray.data.sources import UNLABELED, load_source
    from mtbert_ray.data.tokenize import encode_arrow
    from mtbert_ray.models.hub import load_tokenizer

    raw = load_source(cfg.data)
    labelled = len(raw.splits["train"].frame)
    unlabeled = len(raw.splits[UNLABELED].frame) if UNLABELED in raw.splits else 0
    frame = pd.concat([raw.splits[s].frame for s in ("train", UNLABELED) if s in raw.splits], ignore_index=True)
    sample = frame.sample(n=min(SAMPLE_ROWS, len(frame)), random_state=0)
    tokenizer = load_tokenizer(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code)
    columns, _ = encode_arrow(tokenizer, sample["text_a"].tolist(), sample["text_b"].tolist() if raw.pair else None,
                              cfg.data.max_length)
    lengths = columns["input_ids"].value_lengths().to_numpy()
    return labelled, unlabeled, float(lengths.mean()) if len(lengths) else 0.0


def _teacher_shape(cfg: ExperimentConfig, name: str) -> tuple[int, int]:
    """(width, depth) of a teacher from its config.json."""
    from mtbert_ray.models.hub import load_config, model_depth

    config = load_config(name, trust_remote_code=cfg.trust_remote_code)
    return int(config.hidden_size), model_depth(config, name)


def cache_bytes(cfg: ExperimentConfig, rows: int, tokens: float, widths: list[int], num_labels: int = 2) -> float:
    """Same formula as ``train.cache.estimate_cache_bytes``, from the config and the data's shape alone."""
    from mtbert_ray.train.cache import INDEX_BYTES_PER_TOKEN

    per_token = INDEX_BYTES_PER_TOKEN
    if cfg.cache.hidden and cfg.loss.hidden:
        per_token += sum(widths) * cfg.student.num_layers * STORED_BYTES[cfg.cache.dtype]
    return rows * (tokens * per_token + len(cfg.teachers) * num_labels * 4)


def plan(space: Space) -> str:
    """The dry-run report of a loaded space."""
    from mtbert_ray.trial_needs import trial_needs

    trials = planned_trials(space)
    base = space.trial_config(_first_params(space))
    lines = [f"study {space.spec.name} ({space.source}): {space.search.searcher} search, {len(trials)} trial(s)"
             + (f"; {', '.join(trials[0].sampled)} sampled by {space.search.searcher}" if trials and trials[0].sampled else "")]
    keys = list(trials[0].params) if trials else []
    lines.append("  " + " | ".join(["#", *keys]))
    for i, trial in enumerate(trials, start=1):
        lines.append("  " + " | ".join([str(i), *[_short(trial.params[k]) for k in keys]]))

    co_runs: dict[tuple, list[int]] = {}
    caches: dict[tuple, list[int]] = {}
    heads: dict[tuple, list[int]] = {}
    for i, trial in enumerate(trials, start=1):
        co_runs.setdefault(_cofinetune_identity(trial.config, trial.sampled), []).append(i)
        head = head_teacher(trial.config)
        if head is not None and [head] != list(trial.config.teachers):
            heads.setdefault(_cofinetune_identity(trial.config, trial.sampled, (head,)), []).append(i)
        cache = _cache_identity(trial.config, trial.sampled)
        if cache is not None:
            caches.setdefault(cache, []).append(i)
    for identity, members in heads.items():  # the student's head from a teacher co-finetuned alone: a run of its own
        co_runs.setdefault(identity, [])
    varying = any(identity[-1] for identity in co_runs)
    count = f"up to {len(trials)}" if varying else str(len(co_runs))
    lines.append(f"co-finetuning runs: {count} distinct (trials that share teachers, data, co-finetuning settings and seed "
                 "share one; a finished run already in the results folder is reused)")
    for identity, members in co_runs.items():
        lines.append(f"  teachers {', '.join(identity[0])} · seed {identity[2]} → trials {_ranges(members)}"
                     if members else f"  teachers {', '.join(identity[0])} · seed {identity[2]}")
        if identity in heads:
            lines[-1] += f" (the student's head, student.head_init, of trials {_ranges(heads[identity])})"

    shapes_of: dict[str, tuple[int, int, float]] = {}

    def data_shape(cfg: ExperimentConfig) -> tuple[int, int, float]:
        key = cfg.data.model_dump_json() + cfg.student.init_from
        if key not in shapes_of:
            shapes_of[key] = _data_shape(cfg)
        return shapes_of[key]

    rows, unlabeled_rows, tokens = data_shape(base)
    shapes = {t: _teacher_shape(base, t) for t in {t for trial in trials for t in trial.config.teachers}}
    total = 0.0
    lines.append(f"teacher caches: {len(caches)} distinct ({rows:,} labelled training rows"
                 + (f" + {unlabeled_rows:,} unlabelled" if unlabeled_rows else "") + f", ~{tokens:.1f} student tokens per row)")
    for (co, student, layers, dtype, *_), members in caches.items():
        cfg = trials[members[0] - 1].config
        widths = [shapes[t][0] for t in cfg.teachers]
        labelled, unlabeled, cfg_tokens = data_shape(cfg)
        size = cache_bytes(cfg, labelled + unlabeled, cfg_tokens, widths)
        total += size
        what = f"hidden states of {layers} layer map(s) in {dtype}" if layers else "logits only"
        what += f"; + {unlabeled:,} unlabelled rows" if unlabeled else ""
        lines.append(f"  teachers {', '.join(co[0])} → {student} ({what}): ~{size / 1e9:,.2f} GB → trials {_ranges(members)}")
    if caches:
        lines.append(f"  all caches: ~{total / 1e9:,.2f} GB on disk (cache.max_gb {base.cache.max_gb:g} refuses a larger one)")

    r = base.resources
    needs = trial_needs(base, space.search.trial_cpus, space.search.driver_resource)
    where = "in the trial's own process (the teacher cache too)" if r.in_process else f"on {r.num_workers} Ray Train worker(s)"
    lines.append(f"resources per trial: {needs.describe()}; its stages run {where}")
    concurrent = min(space.search.max_concurrent_trials, len(trials))
    peak = needs.peak
    lines.append(f"at most {concurrent} trial(s) at once (search.max_concurrent_trials): a cluster of at least "
                 f"{concurrent * peak['CPU']:g} CPU" + (f" and {concurrent * peak['GPU']:g} GPU" if peak["GPU"] else "")
                 + " runs them all at their peak; the sweep caps the trials at once to what the cluster it joins holds, "
                 "and refuses a plan whose one trial cannot fit")
    if r.use_gpu:
        from mtbert_ray.memory_fit import memory_lines

        lines += memory_lines(base)
    return "\n".join(lines)


def _first_params(space: Space) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, dim in space.spec.space.items():
        values = space.dimension_values(key, dim)
        params[key] = values[-1] if values else dim.examples()[0]
    return params


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ranges(members: list[int]) -> str:
    """[1, 2, 3, 5] → "1–3, 5"."""
    out, start = [], members[0]
    for a, b in zip(members, [*members[1:], None]):
        if b != a + 1:
            out.append(f"{start}–{a}" if a > start else str(a))
            start = b
    return ", ".join(out)

