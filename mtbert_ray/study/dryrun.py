"""``python -m mtbert_ray.sweep --space FILE --dry-run``: what a study will run, before anything runs.

Prints the trials (grid points × seeds, or the number of sampled trials), the distinct co-finetuning
runs and teacher caches the trials share (each cache with its estimated size on disk), what each trial
asks Ray for, and the most GPUs the study holds at once — what a user sizing a cluster needs and Tune
does not show. It reads the data source (row counts, and token lengths of a sample with the student's
tokenizer) and the models' ``config.json`` files; it trains nothing and writes nothing.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.common.hashing import stable_hash
from mtbert_ray.config import ExperimentConfig, head_teacher, read_yaml, uses_cache
from mtbert_ray.config.keys import COFINETUNE, TEACHER_CACHE, StageSpec
from mtbert_ray.config.space import Space
from mtbert_ray.data.augment import augmented_fingerprint
from mtbert_ray.data.shards import dataset_key, tokenizer_spec
from mtbert_ray.data.sources import UNLABELED, load_source
from mtbert_ray.data.tokenize import encode_arrow
from mtbert_ray.distributed.needs import Cluster, TrialNeeds, autoscaler_headroom, fit_plan, node_type_resources, trial_needs
from mtbert_ray.distributed.packing import Node, place_trial
from mtbert_ray.distributed.runtime import local_cpu_count
from mtbert_ray.experiment.cache_size import INDEX_BYTES_PER_TOKEN, cache_row_bytes
from mtbert_ray.experiment.key_facts import KeyFacts, cofinetune_inputs, teacher_cache_inputs
from mtbert_ray.experiment.stages import CACHE_SPLITS, alone_config
from mtbert_ray.models.hub import load_config, load_tokenizer, model_depth
from mtbert_ray.store.stage import MARKER
from mtbert_ray.tools.input_rate import feed_rate, student_flops_per_row
from mtbert_ray.tools.memory_fit import encoder_shape, memory_lines

SAMPLE_ROWS = 2000
SAMPLED = "(sampled)"


@dataclass
class PlannedTrial:
    params: dict[str, Any]
    config: ExperimentConfig
    sampled: list[str]  # space keys whose value Tune samples
    varies: list[str] = field(default_factory=list)  # config keys a sampled value can change (a variant: the keys it sets)


#: The space keys whose values can change what a trial asks Ray for (``distributed.needs.trial_needs``; a variant may
#: set any of them): every ``resources.*`` key, and the switches that decide whether the teacher cache's stage runs.
SIZING_PREFIX = "resources."
SIZING_KEYS = ("variant", "cache.enabled", "cache.hidden", "loss.hidden", "loss.distill")
MAX_SIZED = 256  # trial kinds sized one by one; beyond, each dimension's values are varied alone around the base


def trial_kinds(space: Space, driver: str | None = None) -> dict[str, tuple[TrialNeeds, ExperimentConfig]]:
    """Every distinct kind of trial the study can start, by what it asks Ray for: the base experiment and each value of
    each variant and of each dimension that can change the ask (``resources.*``, ``cache.*``, ``loss.*``; a sampled
    range by its ends) — label → (needs, config). Before any trial starts, each of them is placed on the cluster."""
    dims = {k: d for k, d in space.spec.space.items() if k in SIZING_KEYS or k.startswith(SIZING_PREFIX)}
    values = {k: space.dimension_values(k, d) or d.examples() for k, d in dims.items()}
    combos: list[dict[str, Any]] = [{}]  # the base experiment first: trials that ask what it asks are "each trial"
    if math.prod(len(v) for v in values.values()) <= MAX_SIZED:
        combos += [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    else:
        combos += [{key: value} for key, options in values.items() for value in options]
    kinds: dict[str, tuple[TrialNeeds, ExperimentConfig]] = {}
    for params in combos:
        config = space.trial_config(params) if params else space.base_config
        needs = trial_needs(config, space.search.trial_cpus, driver)
        if any(needs == known for known, _ in kinds.values()):
            continue
        label = ("each trial" if not params else "the trial of " + ", ".join(
            f"variant {v!r}" if k == "variant" else f"{k}={v}" for k, v in params.items()))
        kinds[label] = (needs, config)
    return kinds


def planned_trials(space: Space) -> list[PlannedTrial]:
    """Every trial the study will start: the grid (seeds included) × num_samples; sampled dimensions shown as sampled,
    except in the trials ``search.points_to_evaluate`` fixes (Optuna's first ones)."""
    grid: dict[str, list[Any]] = {}
    sampled: list[str] = []
    for key, dim in space.spec.space.items():
        if dim.kind == "grid":
            grid[key] = space.dimension_values(key, dim)
        else:
            sampled.append(key)
    if "seed" not in space.spec.space:
        grid["seed"] = list(space.search.seeds)
    varies = [k for k in sampled if k != "variant"]
    if "variant" in sampled:
        varies += sorted({key for overrides in (space.spec.variants or {}).values() for key in overrides})
    points = list(space.search.points_to_evaluate or [])  # Optuna's first trials: fixed, not sampled
    trials = []
    for _ in range(space.search.num_samples):
        for combo in itertools.product(*grid.values()):
            params = dict(zip(grid, combo))
            if points:
                point = points.pop(0)
                trials.append(PlannedTrial({**params, **point}, space.trial_config({**params, **point}), [], []))
                continue
            probe = {**params, **{k: space.spec.space[k].examples()[0] for k in sampled}}
            config = space.trial_config(probe)
            trials.append(PlannedTrial({**params, **{k: SAMPLED for k in sampled}}, config, sampled, varies))
    return trials


@dataclass
class StagePlan:
    """The published stages a study's trials use, by the keys the stages will compute (``experiment.key_facts``): for each kind,
    key → the trials (numbered from 1) that read it. ``varying``: a sampled dimension changes stage 1, so its keys are
    known only once Tune samples (each trial is counted as a run of its own)."""

    cofinetune: dict[str, list[int]] = field(default_factory=dict)
    heads: dict[str, list[int]] = field(default_factory=dict)  # stage-1 keys that are a student.head_init teacher alone
    teacher_cache: dict[str, list[int]] = field(default_factory=dict)
    teachers: dict[str, list[str]] = field(default_factory=dict)  # stage-1 key → its teachers
    seeds: dict[str, int] = field(default_factory=dict)  # stage-1 key → its seed
    cache_configs: dict[str, ExperimentConfig] = field(default_factory=dict)  # teacher-cache key → a trial's config
    varying: bool = False
    caches_varying: bool = False  # a sampled value changes the teacher caches' keys (not stage 1's)


def _touches(spec: StageSpec, sampled: list[str]) -> bool:
    """Whether a sampled config key changes what ``spec``'s key reads."""
    return any(k == p or k.startswith(p + ".") or p.startswith(k + ".") for k in sampled for p in spec.paths())


class _Facts:
    """``experiment.key_facts.KeyFacts`` from the config alone: the source files' fingerprint (the same ``load_source`` the run
    calls), each model's tokenizer files and ``config.json``; each read once per dry run."""

    def __init__(self) -> None:
        self._raw: dict[str, Any] = {}
        self._tokenization: dict[tuple[str, bool], str] = {}
        self._depth: dict[str, int] = {}
        self._width: dict[str, int] = {}

    def raw(self, cfg: ExperimentConfig):
        key = cfg.data.model_dump_json()
        if key not in self._raw:
            self._raw[key] = load_source(cfg.data)
        return self._raw[key]

    def tokenization(self, name: str, trust_remote_code: bool) -> str:
        if (name, trust_remote_code) not in self._tokenization:
            self._tokenization[name, trust_remote_code] = tokenizer_spec(name, trust_remote_code).tokenization
        return self._tokenization[name, trust_remote_code]

    def of(self, cfg: ExperimentConfig) -> KeyFacts:
        raw = self.raw(cfg)
        models = [*cfg.teachers, cfg.student.init_from]
        width = None
        if cfg.cofinetune.head_width == "student":
            if cfg.student.init_from not in self._width:
                self._width[cfg.student.init_from] = int(load_config(cfg.student.init_from,
                                                                     trust_remote_code=cfg.trust_remote_code).hidden_size)
            width = self._width[cfg.student.init_from]
        for t in cfg.teachers:
            if t not in self._depth:
                self._depth[t] = _teacher_shape(cfg, t)[1]
        key = dataset_key(raw, cfg.data)
        unlabeled, splits = raw.unlabeled_fingerprint, tuple(raw.splits)
        if cfg.data.augment.copies:  # the augmented text joins the unlabelled split: its key is known without making it
            unlabeled = augmented_fingerprint(raw, cfg.data, key)
            splits = tuple(dict.fromkeys([*splits, UNLABELED]))
        return KeyFacts(key, unlabeled, splits,
                        {m: self.tokenization(m, cfg.trust_remote_code) for m in models}, width,
                        {t: self._depth[t] for t in cfg.teachers})


def planned_stages(trials: list[PlannedTrial], stages_root: Path | None = None) -> StagePlan:
    """The stage keys of every planned trial, computed as the stages compute them (``experiment.key_facts``). With
    ``stages_root`` (``<storage>/stages``), a logits-only trial counts the cache with hidden states it would reuse."""
    facts = _Facts()
    out = StagePlan()
    for i, trial in enumerate(trials, start=1):
        cfg = trial.config
        if _touches(COFINETUNE, trial.varies):
            out.varying = True
            co = f"(sampled, trial {i})"
        else:
            co = stable_hash(cofinetune_inputs(cfg, facts.of(cfg)))
        out.cofinetune.setdefault(co, []).append(i)
        out.teachers[co], out.seeds[co] = list(cfg.teachers), cfg.seed
        head = head_teacher(cfg)
        if head is not None and [head] != list(cfg.teachers) and not out.varying:
            alone = alone_config(cfg, head)
            own = stable_hash(cofinetune_inputs(alone, facts.of(alone)))
            out.heads.setdefault(own, []).append(i)
            out.cofinetune.setdefault(own, [])
            out.teachers[own], out.seeds[own] = [head], cfg.seed
        if _touches(TEACHER_CACHE, trial.varies):
            out.caches_varying = True
        if not uses_cache(cfg) or out.varying or out.caches_varying:
            continue
        known = facts.of(cfg)
        splits = [s for s in CACHE_SPLITS if s in known.splits]
        hidden = cfg.cache.hidden and cfg.loss.hidden
        key = stable_hash(teacher_cache_inputs(cfg, known, co, splits, hidden))
        if not hidden and stages_root is not None:
            richer = stable_hash(teacher_cache_inputs(cfg, known, co, splits, True))
            if (stages_root / "teacher_cache" / richer / MARKER).is_file():
                key = richer
        out.teacher_cache.setdefault(key, []).append(i)
        out.cache_configs.setdefault(key, cfg)
    return out


def _data_shape(cfg: ExperimentConfig) -> tuple[int, int, float]:
    """(labelled training rows, unlabelled rows, mean tokens per example with the student's tokenizer on a sample of up
    to SAMPLE_ROWS of both)."""
    raw = load_source(cfg.data)
    labelled = len(raw.splits["train"].frame)
    unlabeled = len(raw.splits[UNLABELED].frame) if UNLABELED in raw.splits else 0
    texts = {c: pd.ArrowDtype(pa.large_string()) for c in ("text_a", "text_b") if c in raw.splits["train"].frame}
    frame = pd.concat([raw.splits[s].frame[list(texts)].astype(texts) for s in ("train", UNLABELED) if s in raw.splits],
                      ignore_index=True)  # in Arrow, as the unlabelled texts are: no Python string for each row
    sample = frame.sample(n=min(SAMPLE_ROWS, len(frame)), random_state=0)
    tokenizer = load_tokenizer(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code)
    columns, _ = encode_arrow(tokenizer, sample["text_a"].tolist(), sample["text_b"].tolist() if raw.pair else None,
                              cfg.data.max_length)
    lengths = columns["input_ids"].value_lengths().to_numpy()
    return labelled, unlabeled, float(lengths.mean()) if len(lengths) else 0.0


def _teacher_shape(cfg: ExperimentConfig, name: str) -> tuple[int, int]:
    """(width, depth) of a teacher from its config.json."""
    config = load_config(name, trust_remote_code=cfg.trust_remote_code)
    return int(config.hidden_size), model_depth(config, name)


def cache_bytes(cfg: ExperimentConfig, rows: int, tokens: float, widths: list[int], num_labels: int = 2) -> float:
    """The stage's own formula (``experiment.cache_size``), from the config and the data's shape alone."""
    hidden = cfg.cache.hidden and cfg.loss.hidden
    return rows * cache_row_bytes(cfg, tokens, widths, num_labels, hidden)


def plan(space: Space, stages_root: Path | None = None) -> str:
    """The dry-run report of a loaded space; with ``stages_root`` (``<storage>/stages``), which stages are already
    published there (and reused) and which the study will build."""
    trials = planned_trials(space)
    base = space.trial_config(_first_params(space))
    lines = [f"study {space.spec.name} ({space.source}): {space.search.searcher} search, {len(trials)} trial(s)"
             + (f"; {', '.join(trials[0].sampled)} sampled by {space.search.searcher}" if trials and trials[0].sampled else "")]
    keys = list(trials[0].params) if trials else []
    lines.append("  " + " | ".join(["#", *keys]))
    for i, trial in enumerate(trials, start=1):
        lines.append("  " + " | ".join([str(i), *[_short(trial.params[k]) for k in keys]]))

    stages = planned_stages(trials, stages_root)

    def status(kind: str, key: str) -> str:
        if stages_root is None or key.startswith("("):
            return ""

        return " · published, reused" if (stages_root / kind / key / MARKER).is_file() else " · to build"

    count = f"up to {len(trials)}" if stages.varying else str(len(stages.cofinetune))
    lines.append(f"co-finetuning runs: {count} distinct (trials that share teachers, data, co-finetuning settings and seed "
                 "share one; a finished run already in the results folder is reused)")
    for key, members in stages.cofinetune.items():
        line = f"  cofinetune/{key}{status('cofinetune', key)} · teachers {', '.join(stages.teachers[key])} · seed {stages.seeds[key]}"
        line += f" → trials {_ranges(members)}" if members else ""
        if key in stages.heads:
            line += f" (the student's head, student.head_init, of trials {_ranges(stages.heads[key])})"
        lines.append(line)

    shapes_of: dict[str, tuple[int, int, float]] = {}

    def data_shape(cfg: ExperimentConfig) -> tuple[int, int, float]:
        key = cfg.data.model_dump_json() + cfg.student.init_from
        if key not in shapes_of:
            shapes_of[key] = _data_shape(cfg)
        return shapes_of[key]

    rows, unlabeled_rows, tokens = data_shape(base)
    shapes = {t: _teacher_shape(base, t) for t in {t for trial in trials for t in trial.config.teachers}}
    total = 0.0
    caches = stages.teacher_cache
    known = "known once Tune samples, a sampled value changes their keys" if stages.caches_varying or stages.varying else None
    lines.append(f"teacher caches: {known or f'{len(caches)} distinct'} ({rows:,} labelled training rows"
                 + (f" + {unlabeled_rows:,} unlabelled" if unlabeled_rows else "") + f", ~{tokens:.1f} student tokens per row)")
    for key, members in caches.items():
        cfg = stages.cache_configs[key]
        widths = [shapes[t][0] for t in cfg.teachers]
        labelled, unlabeled, cfg_tokens = data_shape(cfg)
        size = cache_bytes(cfg, labelled + unlabeled, cfg_tokens, widths)
        total += size
        hidden = cfg.cache.hidden and cfg.loss.hidden
        what = f"hidden states of {cfg.student.num_layers} layer map(s) in {cfg.cache.dtype}" if hidden else "logits only"
        what += f"; + {unlabeled:,} unlabelled rows" if unlabeled else ""
        lines.append(f"  teacher_cache/{key}{status('teacher_cache', key)} · teachers {', '.join(cfg.teachers)} → "
                     f"{cfg.student.init_from} ({what}): ~{size / 1e9:,.2f} GB → trials {_ranges(members)}")
    if caches:
        lines.append(f"  all caches: ~{total / 1e9:,.2f} GB on disk (cache.max_gb {base.cache.max_gb:g} refuses a larger one)")

    r = base.resources
    where = "in the trial's own process (the teacher cache too)" if r.in_process else f"on {r.num_workers} Ray Train worker(s)"
    lines += packing_lines(space, len(trials), where)
    if r.use_gpu:
        lines += memory_lines(base)
        lines += _feed_lines(base, tokens, [shapes[t][0] for t in base.teachers])
    return "\n".join(lines)


def packing_lines(space: Space, planned: int, where: str) -> list[str]:
    """Each kind of trial placed as Ray would place it (``distributed.packing``): on the node types of
    ``search.autoscaling_config`` when the study names one (the largest cluster it can reach), else on this machine's
    embedded Ray; which bundle lands on which node type at each stage, and how many trials pack together."""
    kinds = trial_kinds(space, space.search.driver_resource)
    wanted = min(space.search.max_concurrent_trials, planned)
    path = space.search.autoscaling_config or os.environ.get("MTBERT_AUTOSCALING_CONFIG")
    if path:
        cluster_file = read_yaml(path)
        head_type = cluster_file.get("head_node_type")
        head = (cluster_file.get("available_node_types") or {}).get(head_type, {})
        launchable, budget = autoscaler_headroom(cluster_file)
        live = (Node(f"{head_type} (the head)", str(head_type), node_type_resources(str(head_type), head)),) if head else ()
        cluster = Cluster(live, launchable, budget, f"the cluster of {path} fully scaled up")
    else:
        peak = max(needs.peak["CPU"] for needs, _ in kinds.values())
        cluster = Cluster.of_nodes({"CPU": float(local_cpu_count(wanted * peak))},
                                   source="this machine's embedded Ray (give search.autoscaling_config to plan for a cluster)")
    lines = []
    for label, (needs, _) in kinds.items():
        lines.append(f"resources of {label}: {needs.describe()}; its stages run {where}")
    try:
        allowed = fit_plan({label: needs for label, (needs, _) in kinds.items()}, cluster, wanted)
    except ConfigError as exc:
        return [*lines, f"packing on {cluster.source}: refused — {exc}"]
    lines.append(f"packing on {cluster.source} (first-fit, as Ray places bundles):")
    for label, (needs, _) in kinds.items():
        for stage, placement in place_trial(needs.shape(label), cluster.reachable()).items():
            spots = "; ".join(f"{kind}: {', '.join(bundles)}" for kind, bundles in placement.by_kind().items())
            lines.append(f"  {label}, {stage}: {spots}")
    lines.append(f"at most {allowed} trial(s) at once pack together there (of {wanted} asked: search.max_concurrent_trials "
                 f"{space.search.max_concurrent_trials}, {planned} trial(s) planned); the sweep places the plan again on "
                 "the cluster it joins, on what is free there, and refuses a plan one of whose trials can never start")
    return lines


def _feed_lines(cfg: ExperimentConfig, tokens: float, widths: list[int]) -> list[str]:
    """Stage 3's input rate on a GPU (``input_rate``): the rows/s one H100 trains, the bytes a row reads, the CPUs per
    GPU worker that deliver them, and a warning when ``resources.cpus_per_worker`` is short of that."""
    layers = cfg.student.num_layers
    shape = encoder_shape(load_config(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code, num_hidden_layers=layers))
    projected = tuple(widths) if cfg.loss.hidden else ()
    flops = student_flops_per_row(layers * 12 * shape.hidden ** 2, layers, shape.hidden, tokens, projected)
    row = cache_bytes(cfg, 1, tokens, widths) if uses_cache(cfg) else tokens * INDEX_BYTES_PER_TOKEN * (1 + len(widths))
    rate = feed_rate(flops, row)
    lines = [f"stage-3 input (reasoned, mtbert_ray/tools/input_rate.py): {rate.describe()}"]
    if rate.cpus_per_gpu > cfg.resources.cpus_per_worker:
        lines.append(f"  warning: resources.cpus_per_worker {cfg.resources.cpus_per_worker:g} is short of the ~{rate.cpus_per_gpu} "
                     "CPUs that decode a GPU's rows: the GPU will wait for input"
                     + ("; cache.hidden: false (logits only, the teachers' states computed on the GPU) reads far less"
                        if cfg.cache.hidden and cfg.loss.hidden else ""))
    return lines


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

