"""The three stages of an experiment, each a function of the ``StageContext`` that returns what it made.

- ``cofinetune`` — stage 1, a published stage keyed by everything that changes the trained teachers
  (teachers, their tokenizations, dataset, max_length, co-finetuning settings, seed, global batch
  and number of workers, precision); a crashed attempt resumes from its last checkpoint.
- ``teacher_cache`` — stage 2, a published stage keyed by (co-finetuned teachers, dataset, student
  tokenization, cached layers and dtype), built with Ray Data (``distributed.teacher_cache``).
- ``distill`` — stage 3 in the run folder (a rerun of the run folder resumes).

Stages 1 and 3 run their epoch loop through ``distributed.train.run_stage`` (in the calling process, or
on Ray Train workers).
"""
from __future__ import annotations

from pathlib import Path

from mtbert_ray.common.hashing import stable_hash
from mtbert_ray.common.metric_names import UNLABELED, teacher_head
from mtbert_ray.config import ExperimentConfig, distill_seed, head_teacher
from mtbert_ray.core.loop import PREDICTIONS_DIR, merge_predictions
from mtbert_ray.core.session import StageRun
from mtbert_ray.core.steps import cofinetune as cofinetune_step
from mtbert_ray.core.steps import distill as distill_step
from mtbert_ray.core.steps.distill import head_widths, student_head_decision
from mtbert_ray.core.training import OPTIMIZER_FILE, SCALER_FILE, read_training_state
from mtbert_ray.data.columns import view_columns
from mtbert_ray.distributed.loader import MATERIALIZE_MAX_BYTES, read_split
from mtbert_ray.distributed.teacher_cache import TRAINING_ROWS, CacheJob, build_teacher_cache
from mtbert_ray.distributed.train import StageJob, run_stage
from mtbert_ray.experiment import key_facts
from mtbert_ray.experiment.cache_size import check_cache_size, estimate_cache
from mtbert_ray.experiment.context import CacheInfo, StageContext
from mtbert_ray.experiment.key_facts import KeyFacts
from mtbert_ray.models.layer_map import layer_map
from mtbert_ray.models.projection import FIT_ROWS, projection_plan
from mtbert_ray.models.teachers import read_ensemble_meta
from mtbert_ray.store.stage import Built, Published, read_stage, reuse_or_build

#: Distillation reads teacher outputs for its training rows only — labelled and unlabelled (``data.unlabeled``);
#: evaluation reads the view.
CACHE_SPLITS = ("train", UNLABELED)
DISTILL_SPLITS = ("train", UNLABELED)  # the rows stage 3 trains on (co-finetuning: "train" only)


def cofinetune_inputs(ctx: StageContext, nonce: str | None = None) -> dict:
    """What the co-finetuning key is computed from (``config.keys.COFINETUNE``): everything that changes the trained
    teachers. ``nonce`` (a run folder, with ``cofinetune.reuse: false``) makes the key private to one run."""
    return key_facts.cofinetune_inputs(ctx.config, KeyFacts.of(ctx), nonce)


def cofinetune_key(ctx: StageContext, nonce: str | None = None) -> str:
    return stable_hash(cofinetune_inputs(ctx, nonce))


def _identity(ctx: StageContext) -> str:
    cfg = ctx.config
    return stable_hash({"teachers": list(cfg.teachers), "data": ctx.data.dataset_key, "max_length": cfg.data.max_length})


def _splits(ctx: StageContext, names) -> list[str]:
    return [s for s in names if s in ctx.data.splits]


def _view(ctx: StageContext, tokenizations, split: str, offsets: bool, seed: int | None = None):
    """A split of the view with the columns of ``tokenizations``; ``seed``: shuffled blocks per epoch (training)."""
    return read_split(ctx.data.splits[split], view_columns(tokenizations, with_offsets=offsets), shuffle_seed=seed,
                      max_bytes=_driver_read_cap(ctx))


def _driver_read_cap(ctx: StageContext) -> int | None:
    """Splits read in this process up to this size (``distributed.loader.read_split``): no cap when the stage runs here."""
    return None if ctx.config.resources.in_process else MATERIALIZE_MAX_BYTES


def cofinetune(ctx: StageContext, stages: Path, nonce: str | None = None, verify: bool = False) -> Published:
    """Stage 1: the co-finetuned teachers of this key, reused or trained (resuming a stopped attempt)."""
    cfg = ctx.config
    inputs = cofinetune_inputs(ctx, nonce)

    def build(folder: Path) -> Built:
        tokenizations = ctx.teacher_tokenizations
        datasets = {"train": _view(ctx, tokenizations, "train", offsets=False, seed=cfg.seed)}
        datasets.update({s: _view(ctx, tokenizations, s, offsets=False) for s in _splits(ctx, ("validation", "test"))})
        run = run_stage(StageJob(cofinetune_step.NAME, ctx.cofinetune_spec(), ctx.loop_spec(cofinetune_step.NAME),
                                 cfg.resources, name="run", storage_path=folder, datasets=datasets,
                                 max_failures=cfg.max_failures, tensorboard_tag="cofinetune"))
        state = read_training_state(run.best_checkpoint)
        meta = {"metrics": run.best_metrics, "test": state.get("test"), "epoch": state.get("best_epoch")}
        return Built(run.best_checkpoint, meta, exclude=(OPTIMIZER_FILE, SCALER_FILE))  # not needed once finished

    return reuse_or_build(stages, "cofinetune", stable_hash(inputs), build, what=f"stage 1, co-finetuning {len(cfg.teachers)} teacher(s)",
                          inputs=inputs, identity=_identity(ctx), verify=verify)


def alone(ctx: StageContext, teacher: str) -> StageContext:
    """The context of ``teacher`` co-finetuned alone with this experiment's stage-1 settings (``alone_config``)."""
    return StageContext(alone_config(ctx.config, teacher), ctx.data)


def alone_config(cfg: ExperimentConfig, teacher: str) -> ExperimentConfig:
    """``cfg`` with ``teacher`` as its one teacher: the stage whose head ``student.head_init: <teacher>`` copies (the
    same key as a run of that one teacher, so it is shared with it)."""
    data = cfg.model_dump(mode="json")
    data["teachers"] = [teacher]
    data["loss"].update(teacher_prior=None, hidden_teachers="all")
    data["student"]["head_init"] = "from_teachers"
    return type(cfg).model_validate(data)


def with_head_teacher(ctx: StageContext, stages: Path, teachers: Published, nonce: str | None = None,
                 verify: bool = False) -> StageContext:
    """``student.head_init: <teacher>``: the context whose student copies that teacher's head co-finetuned alone
    (this run's stage 1 when it is that teacher alone, else its own stage 1, reused or trained)."""
    choice = head_teacher(ctx.config)
    if choice is None:
        return ctx
    if list(ctx.config.teachers) == [choice]:
        return ctx.with_updates(head_checkpoint=str(teachers.path))
    print(f"[mtbert] student head: from {choice} co-finetuned alone (student.head_init)", flush=True)
    own = cofinetune(alone(ctx, choice), stages, nonce, verify)
    return ctx.with_updates(head_checkpoint=str(own.path))


def with_teachers(ctx: StageContext, teachers: Published) -> StageContext:
    """The context once stage 1 is done: the teachers' folder, widths, depths and layer maps (decision c)."""
    meta = read_ensemble_meta(teachers.path)
    maps = [layer_map(ctx.config.student.num_layers, depth, ctx.config.loss.layer_map) for depth in meta["depths"]]
    return ctx.with_updates(teachers_checkpoint=str(teachers.path), teacher_widths=meta["widths"],
                            teacher_depths=meta["depths"], layer_maps=maps)


def teacher_cache(ctx: StageContext, stages: Path, teachers: Published, verify: bool = False) -> tuple[Published, StageContext]:
    """Stage 2: teacher logits (and aligned states) of the training rows, once per key; the context that reads it."""
    cfg = ctx.config
    hidden = cfg.cache.hidden and cfg.loss.hidden
    splits = _splits(ctx, CACHE_SPLITS)

    def cache_key(with_states: bool) -> str:
        return stable_hash(key_facts.teacher_cache_inputs(cfg, KeyFacts.of(ctx), teachers.key, splits, with_states))

    key = cache_key(hidden)
    if not hidden:  # a cache with hidden states also holds every logit: reuse it rather than build a logits-only one
        richer = read_stage(stages / "teacher_cache" / cache_key(True), verify)
        if richer is not None:
            print(f"[mtbert] stage 2, teacher cache: reusing teacher_cache/{richer.key} (logits of a cache with hidden states)",
                  flush=True)
            files = {TRAINING_ROWS: [str(p) for p in richer.files(f"{TRAINING_ROWS}/", ".parquet")]}
            return richer, ctx.with_updates(cache=CacheInfo(files, False, richer.meta.get("dtype", cfg.cache.dtype)))

    def build(folder: Path) -> Built:
        data = ctx.data
        estimate = estimate_cache(cfg, {s: data.rows[s] for s in splits},
                                  {s: data.mean_tokens(ctx.student_tokenization, s) for s in splits},
                                  ctx.teacher_widths, data.num_labels, hidden)
        print(f"[mtbert] teacher cache: estimated {estimate.gb:,.2f} GB on disk ({estimate.formula})", flush=True)
        check_cache_size(cfg, estimate)
        return build_teacher_cache(cache_job(ctx, splits, hidden), folder)

    published = reuse_or_build(stages, "teacher_cache", key, build,
                               what="stage 2, teacher cache" + (" with hidden states" if hidden else ""), verify=verify)
    files = {TRAINING_ROWS: [str(p) for p in published.files(f"{TRAINING_ROWS}/", ".parquet")]}
    info = CacheInfo(files, bool(published.meta.get("hidden", hidden)), published.meta.get("dtype", cfg.cache.dtype))
    return published, ctx.with_updates(cache=info)


def cache_job(ctx: StageContext, splits: list[str], hidden: bool) -> CacheJob:
    """What building the cache of ``splits`` needs (``distributed.teacher_cache``), from the context after stage 1."""
    cfg, data = ctx.config, ctx.data
    return CacheJob(
        teachers_checkpoint=ctx.teachers_checkpoint, teacher_tokenizations=ctx.teacher_tokenizations,
        student_tokenization=ctx.student_tokenization, pad_ids=ctx.pad_ids,
        split_files={s: list(data.splits[s]) for s in splits}, split_rows={s: data.rows[s] for s in splits},
        batch_size=ctx.micro_batch("distill"), layer_maps=[list(m) for m in ctx.layer_maps] if hidden else None,
        dtype=cfg.cache.dtype, precision=cfg.resources.precision, resources=cfg.resources,
        trust_remote_code=cfg.trust_remote_code)


def distill_decisions(ctx: StageContext) -> dict[str, str]:
    """The choices stage 3 makes where the configured one cannot apply as is, in words, known before it runs:
    how the student's head starts, how each W_i· starts, how each teacher's states reach the student's tokens."""
    cfg, width = ctx.config, ctx.student_width
    decisions = {"student_head": student_head_decision(cfg.student.head_init, head_widths(ctx.head_source), width)}
    hidden = ctx.hidden_teachers
    plan = projection_plan([ctx.teacher_widths[i] for i in hidden], width, cfg.loss.projection_init)
    for i, start in zip(hidden, plan):
        name, w = cfg.teachers[i], ctx.teacher_widths[i]
        how = {"identity": "identity", "xavier": "random (Xavier)",
               "least_squares": f"least squares on the first {FIT_ROWS:,} training rows (student in eval mode)"}[start]
        decisions[f"projection_{i}"] = f"W for {name} ({w} → {width}): {how}"
        same = ctx.teacher_tokenizations[i] == ctx.student_tokenization
        decisions[f"alignment_{i}"] = (f"{name}: the student's tokenization" if same else
                                       f"{name}: other tokenizer — states averaged onto the student's tokens by character overlap")
    if cfg.loss.hidden:
        for i in sorted(set(range(len(cfg.teachers))) - set(hidden)):
            decisions[f"hidden_loss_{i}"] = (f"{cfg.teachers[i]}: soft labels only, no hidden loss "
                                             f"(loss.hidden_teachers: {cfg.loss.hidden_teachers})")
    return decisions


def cache_read_columns(ctx: StageContext) -> list[str]:
    """The cache columns stage 3 reads: ids, labels, the student's tokens, logits and — only with the hidden
    loss — the states (a logits-only run reading a cache with states leaves them on disk)."""
    return [*view_columns([ctx.student_tokenization]), *ctx.cache_float_columns]


def distill(ctx: StageContext, run_dir: Path) -> StageRun:
    """Stage 3 in ``<run_dir>/distill`` (a rerun of the same run folder resumes from its latest checkpoint)."""
    cfg = ctx.config
    student = [ctx.student_tokenization]
    splits = _splits(ctx, DISTILL_SPLITS)
    if ctx.cache is not None:
        files = ctx.cache.files[TRAINING_ROWS]  # every training row, labelled and unlabelled interleaved
        columns = cache_read_columns(ctx)
    else:
        files = [f for split in splits for f in ctx.data.splits[split]]
        columns = view_columns([*ctx.teacher_tokenizations, ctx.student_tokenization], with_offsets=True)
    # labelled and unlabelled rows in one training split, mixed (one seeded order) before the per-epoch block shuffle
    train = read_split(files, columns, shuffle_seed=distill_seed(cfg), max_bytes=_driver_read_cap(ctx),
                       mix_seed=distill_seed(cfg) if len(splits) > 1 else None)
    datasets = {"train": train, **{s: _view(ctx, student, s, offsets=False) for s in _splits(ctx, ("validation", "test"))}}
    for what, decision in distill_decisions(ctx).items():
        print(f"[mtbert] {what.rstrip('0123456789').rstrip('_').replace('_', ' ')}: {decision}", flush=True)
    print(f"[mtbert] stage 3: distilling a {cfg.student.num_layers}-layer student "
          f"({'teacher cache' if ctx.cache else 'teachers on the fly'}; {'in this process' if cfg.resources.in_process else 'Ray Train workers'})",
          flush=True)
    return run_stage(StageJob(distill_step.NAME, ctx.distill_spec(), ctx.loop_spec(distill_step.NAME), cfg.resources,
                              name="distill", storage_path=run_dir, datasets=datasets, max_failures=cfg.max_failures,
                              final_epoch=cfg.distill.epochs, tensorboard_tag="distill"))


def test_predictions(ctx: StageContext, teachers: Published, distilled: StageRun, folder: Path) -> tuple[str | None, str | None]:
    """The test predictions of the student and of each selected teacher, one ``index \\t prediction`` line per
    example (``folder/<file>``, ``folder/teacher<i>/<file>``): the benchmark's submission files for an unlabelled test
    split, ``test.tsv`` for a labelled one (for error analysis and paired comparisons over sentences);
    (the student's file, a note on missing test scores)."""
    data = ctx.data
    if "test" not in data.splits:
        return None, "no test split: test scores are missing"
    labelled = data.labelled.get("test", False)
    name = "test.tsv" if labelled else data.submission_file or "test.tsv"
    label_text = (data.submission_labels or data.label_names) if labelled else None
    rows = merge_predictions(distilled.best_checkpoint, folder / name, label_text=label_text)
    for i in range(len(ctx.config.teachers)):
        head = teacher_head(i)
        if any((teachers.path / PREDICTIONS_DIR).glob(f"{head}part-*.tsv")):  # stages published before they were kept
            merge_predictions(teachers.path, folder / head.rstrip("_") / name, head=head, label_text=label_text)
    if labelled:
        return str(folder / name), None
    return str(folder / name), f"the test split has no labels: {rows} predictions written to {folder / name} (submit them to the benchmark)"
