"""Space files: a base experiment + a search space + search settings (``tune_spaces/*.yaml``).

    name: demo                          # default sweep name
    experiment: {...}                   # the base experiment config (or `base: other.yaml`, relative to this file)
    overrides: {distill.epochs: 3}      # dotted keys set on the base
    teacher_pool: {minilm6: <hub id>}   # pool names of the teachers (space key `teachers` picks subsets of them)
    variants: {mt-bert: {}, w/o weighting: {loss.weighted: false}}   # named override sets (space key `variant`)
    space:
      distill.temperature: {loguniform: [0.5, 8]}    # uniform, loguniform, randint [lo, hi), choice, grid
      teachers: {grid: subsets}                      # every non-empty subset of teacher_pool ("a+b" strings)
      variant: {grid: all}                           # every variant
    search: {searcher: optuna, scheduler: asha, num_samples: 8, seeds: [0]}

Dotted space keys address the experiment config; each is checked against the config schema
when the space is loaded, so a typo fails before any trial starts. Trials are ranked by the
experiment's ``select.metric`` / ``select.mode`` on validation (the same setting that selects each
trial's checkpoint), so ``select.*`` is set in the experiment, not varied by the space.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config.experiment import (
    ExperimentConfig,
    apply_overrides,
    check_plain_name,
    format_validation_error,
    parse_override,
    read_yaml,
    set_dotted,
    validate_config,
)

MAX_TRIALS = 10_000  # a study larger than this is refused up front (a 20-teacher subset grid is ~10^6 trials)
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchSettings(_Strict):
    """How Tune searches the space: the searcher, an early-stopping scheduler, trials, seeds and their resources."""

    searcher: Literal["optuna", "grid", "random"] = Field(
        "grid", description="grid: every grid point (and every seed); optuna: TPE samples the space's distributions; "
        "random: Tune's random search.")
    scheduler: Literal["none", "asha", "median"] = Field(
        "none", description="Early stopping on the per-epoch validation reports: ASHA or median stopping.")
    num_samples: int = Field(default=1, ge=1, description="Trials to sample (grid: repeats of the whole grid).")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="Experiment seeds each grid point runs with (the space may vary `seed` instead).")
    max_concurrent_trials: int = Field(default=1, ge=1, description="Trials at once (capped to what the cluster holds).")
    trial_cpus: float = Field(default=0.5, gt=0, description="CPUs of a trial driver whose stages run on Ray Train "
                              "workers (it waits on its TorchTrainer); an in-process trial reserves its stages' CPUs.")
    max_failures: int = Field(default=2, ge=0, description="Tune retries of a failed trial (its run folder resumes "
                              "where it stopped).")
    driver_resource: str | None = Field(
        "mtbert_driver", description="A custom resource trial drivers ask for when their stages run on Ray Train "
        "workers: the cluster files give it to on-demand nodes only, so a preempted spot node never takes a trial "
        "driver with it (null: no constraint).")
    autoscaling_config: str | None = Field(
        None, description="The autoscaler's cluster config (node types, max_workers), to size the study before it "
        "starts: a plan whose one trial cannot fit a fully scaled-up cluster is refused, concurrent trials are capped to "
        "what fits. Default: $MTBERT_AUTOSCALING_CONFIG, else ~/ray_bootstrap_config.yaml on a head that `ray up` started.")
    grace_period: int = Field(default=1, ge=1, description="ASHA: epochs before a trial can be stopped.")
    reduction_factor: float = Field(default=2, gt=1, description="ASHA: the fraction 1/reduction_factor of trials "
                                    "kept at each rung.")
    optuna_seed: int = Field(0, description="Seed of Optuna's sampler.")
    points_to_evaluate: list[dict[str, Any]] | None = Field(
        None, description="Optuna: trials to run first, each a value of every space key (Tune's points_to_evaluate), "
        "e.g. each teacher's own arm in a teacher-mixture study, so that validation always has them to choose from.")
    objectives: list[str] | None = Field(
        None, description="Optuna multi-objective search: reported metrics with their direction, e.g. "
        "[val_accuracy:max, student_params:min] (the frontier study: accuracy against a cheap proxy of latency; the "
        "latency itself is measured after the trials, `mtbert-ray analysis --frontier`). Validation metrics and "
        "student_params only — a test score never steers a search. Needs searcher: optuna and no scheduler.")

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len(value) < 2:
            raise ValueError("expected two objectives or more (one is select.metric, the ordinary search)")
        for item in value:
            name, _, mode = str(item).partition(":")
            if mode not in ("max", "min"):
                raise ValueError(f"{item!r}: expected metric:max or metric:min")
            if not (name.startswith("val_") or name == "student_params"):
                raise ValueError(f"{item!r}: expected a validation metric (val_…) or student_params; never a test score")
        return value

    @model_validator(mode="after")
    def _objectives_need_optuna(self) -> "SearchSettings":
        if self.objectives and (self.searcher != "optuna" or self.scheduler != "none"):
            raise ValueError("objectives: a multi-objective search needs searcher: optuna and scheduler: none")
        return self

    @field_validator("seeds")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("duplicated seed")
        return value

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("metric", "mode"):
                if key in data:
                    raise ValueError(
                        f"search.{key} moved to the experiment's select.{key} (one setting for checkpoint selection, "
                        f"the sweep's ranking and the analysis): set it in the experiment, or --set select.{key}=…"
                    )
        return data


CHOSEN_ROW = "chosen on validation"  # the analysis row of what validation picks per seed (analysis.chosen_row)


def wants_chosen_row(chosen_row: bool | None, row_key: str) -> bool:
    """``analysis.chosen_row`` as set, else on for studies whose rows are teacher subsets."""
    return row_key == "teachers" if chosen_row is None else chosen_row


class AnalysisSettings(_Strict):
    """How ``mtbert_ray.study.analysis`` tabulates the study."""

    rows: str = Field("auto", description="What a table row is: auto, trial, or a space key (teachers, variant, "
                      "student.num_layers, …); a row's seeds are averaged.")
    metrics: list[str] | None = Field(None, description="Reported metrics; default: the task's (GLUE's leaderboard "
                                      "ones; accuracy and macro-F1 otherwise).")
    comparisons: list[tuple[str, str]] | None = Field(
        None, description="(row a, row b) pairs compared on test, paired by seed (t-interval) and by seed and sentence "
        "(bootstrap); default: MT-BERT against every other variant, or all the pool's teachers against each single one.")
    chosen_row: bool | None = Field(
        None, description=f"A row {CHOSEN_ROW!r}: per seed, the finished trial best on validation among every row "
        "(the single-teacher arms with the subsets and mixtures), its test reported, so what a study picks is never "
        "below its best single-teacher arm on validation. Default: on where rows are teacher subsets.")
    group_column: str | None = Field(
        None, description="A column of the data's test file naming each sentence's group (rt_polarity's film, a news "
        "id): the comparisons' bootstrap also resamples whole groups, whose sentences are not independent.")


class Dimension(_Strict):
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Dimension":
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(DISTRIBUTIONS)}; got {given or 'none'}")
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None:
                lo, hi = bounds
                if not lo < hi:
                    raise ValueError(f"{kind}: low {lo} must be < high {hi}")
                if kind == "loguniform" and lo <= 0:
                    raise ValueError(f"loguniform: low {lo} must be > 0")
        for kind in ("choice", "grid"):
            values = getattr(self, kind)
            if isinstance(values, list) and not values:
                raise ValueError(f"{kind}: expected at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    def examples(self) -> list[Any]:
        """Values to check against the config schema (the bounds, or every listed value)."""
        values = self.values
        return list(values) if isinstance(values, (list, tuple)) else [values]


class SpaceFile(_Strict):
    """A study: a base experiment, what varies, how Tune searches, how the analysis tabulates."""

    name: str = Field("sweep", description="Default sweep name (a folder under <storage>/sweeps; --name overrides it).")
    description: str = Field("", description="One line on what the study measures.")
    experiment: dict[str, Any] | None = Field(None, description="The base experiment config, inline (docs/config.md).")
    base: str | None = Field(None, description="Or the base experiment as a YAML file, relative to this file.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys set on the base experiment.")
    teacher_pool: dict[str, str] | None = Field(
        None, description="Pool names of the teachers (hub ids or folders); the space key `teachers` picks subsets "
        "(`grid: subsets`: every non-empty subset, as \"a+b\" names).")
    variants: dict[str, dict[str, Any]] | None = Field(
        None, description="Named override sets (dotted keys); the space key `variant` picks them (`grid: all`).")
    space: dict[str, Dimension] = Field(
        default_factory=dict, description="Dotted config keys (or teachers, variant, seed) → one of uniform [lo, hi], "
        "loguniform [lo, hi], randint [lo, hi), choice [...], grid [...]; each value is checked against the config schema.")
    search: SearchSettings = Field(SearchSettings(), description="How Tune searches.")
    analysis: AnalysisSettings = Field(AnalysisSettings(), description="How the analysis tabulates.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_plain_name(value)

    @model_validator(mode="after")
    def _one_base(self) -> "SpaceFile":
        if (self.experiment is None) == (self.base is None):
            raise ValueError("give the base experiment either inline (experiment:) or as a file (base:)")
        if self.teacher_pool and any("+" in name for name in self.teacher_pool):
            raise ValueError("teacher_pool: pool names must not contain '+'")
        return self


class Space:
    """A loaded, validated space file with its overrides applied."""

    def __init__(self, spec: SpaceFile, base: dict[str, Any], source: str, check: bool = True) -> None:
        """``check=False``: a space the sweep already checked (a trial rebuilding it from the sweep record)."""
        self.spec = spec
        self.base = base
        self.source = source
        self.base_config: ExperimentConfig | None = None  # the validated base experiment (set by the check)
        if check:
            self._check()

    @classmethod
    def from_record(cls, record: Any, check: bool = False) -> "Space":
        """The space of a sweep record (``sweep_record.SweepRecord``): its file's settings and its base experiment,
        checked when the sweep started (``check``: again, as a resumed sweep does once)."""
        return cls(SpaceFile.model_validate(record.spec), record.base, record.source, check=check)

    # ---- derived -------------------------------------------------------------------------
    @property
    def search(self) -> SearchSettings:
        return self.spec.search

    def teacher_subsets(self) -> list[str]:
        pool = list(self.spec.teacher_pool or {})
        return ["+".join(c) for r in range(1, len(pool) + 1) for c in itertools.combinations(pool, r)]

    def grid_trials(self) -> int:
        """Trials the study starts, counted without listing them: Π grid sizes × seeds × num_samples."""
        count = self.search.num_samples * (1 if "seed" in self.spec.space else len(self.search.seeds))
        for key, dim in self.spec.space.items():
            if dim.kind != "grid":
                continue
            if key == "teachers" and dim.values == "subsets":
                count *= 2 ** len(self.spec.teacher_pool or {}) - 1
            elif key == "variant" and dim.values == "all":
                count *= len(self.spec.variants or {})
            elif isinstance(dim.values, list):
                count *= len(dim.values)
        return count

    def dimension_values(self, key: str, dim: Dimension) -> list[Any] | None:
        if key == "teachers" and dim.values == "subsets":
            return self.teacher_subsets()
        if key == "variant" and dim.values == "all":
            return list(self.spec.variants or {})
        return dim.values if isinstance(dim.values, list) else None

    @property
    def row_key(self) -> str:
        rows = self.spec.analysis.rows
        if rows != "auto":
            return rows
        if "variant" in self.spec.space:
            return "variant"
        if "teachers" in self.spec.space:
            return "teachers"
        return "trial"

    def row_labels(self) -> list[str] | None:
        """The analysis rows this study produces (None when rows are trials or a sampled dimension)."""
        key = self.row_key
        dim = self.spec.space.get(key)
        if dim is None:
            return None
        values = self.dimension_values(key, dim)
        return [str(v) for v in values] if values is not None else None

    @property
    def chosen_row(self) -> bool:
        """Whether the analysis adds the row of what validation picks per seed (``analysis.chosen_row``)."""
        return wants_chosen_row(self.spec.analysis.chosen_row, self.row_key)

    def comparisons(self) -> list[tuple[str, str]]:
        """The paired comparisons of the analysis (``analysis.comparisons`` or the paper's, by study kind)."""
        if self.spec.analysis.comparisons is not None:
            return [tuple(c) for c in self.spec.analysis.comparisons]
        rows = self.row_labels() or []
        if self.row_key == "variant" and "MT-BERT" in rows:
            return [("MT-BERT", r) for r in rows if r != "MT-BERT"]
        if self.row_key == "teachers":
            full = "+".join(self.spec.teacher_pool or {})
            singles = [r for r in rows if "+" not in r]
            pairs = [(full, r) for r in singles] if full in rows and len(singles) > 1 else []
            return pairs + ([(CHOSEN_ROW, r) for r in singles] if self.chosen_row and len(rows) > 1 else [])
        return []

    def trial_config(self, params: Mapping[str, Any]) -> ExperimentConfig:
        """The experiment config of one trial: base + variant overrides + sampled values."""
        data = apply_overrides(self.base, [])
        for key, value in params.items():
            if key == "variant":
                for k, v in (self.spec.variants or {})[value].items():
                    set_dotted(data, k.split("."), v)
            elif key == "teachers":
                data["teachers"] = self.decode_teachers(value)
            else:
                set_dotted(data, key.split("."), value)
        return validate_config(data, source=f"{self.source} (trial {dict(params)})")

    def decode_teachers(self, value: str) -> list[str]:
        """``"bert+roberta"`` (pool names joined by '+') → the teachers' hub ids or folders."""
        pool = self.spec.teacher_pool or {}
        names = value.split("+")
        unknown = [n for n in names if n not in pool]
        if unknown:
            raise ConfigError(f"{self.source}: space.teachers: {unknown[0]!r} is not in teacher_pool ({', '.join(pool)})")
        return [pool[n] for n in names]

    # ---- validation ----------------------------------------------------------------------
    def _check(self) -> None:
        spec, src = self.spec, self.source
        trials = self.grid_trials()  # counted first: checking each value of a huge grid would itself take minutes
        if trials > MAX_TRIALS:
            raise ConfigError(f"{src}: the study would start {trials:,} trials (grid points × seeds × num_samples), more than "
                              f"{MAX_TRIALS:,}; narrow the grid (a teacher_pool of n teachers has 2^n - 1 subsets) or sample it")
        self.base_config = validate_config(self.base, source=f"{src}: experiment")
        if spec.search.searcher == "optuna":
            grids = [k for k, d in spec.space.items() if d.kind == "grid"]
            if grids:
                raise ConfigError(f"{src}: space.{grids[0]}: grid values need search.searcher: grid (Optuna samples)")
            if len(spec.search.seeds) > 1:
                raise ConfigError(f"{src}: search.seeds: Optuna studies take one seed; repeat with num_samples or a grid study")
            if not spec.space:
                raise ConfigError(f"{src}: space: an Optuna study needs at least one dimension")
        for key, dim in spec.space.items():
            where = f"{src}: space.{key}"
            if key.startswith("select."):
                raise ConfigError(f"{where}: select.* ranks the trials, so it cannot vary between them; set it in the experiment")
            if key == "teachers":
                if not spec.teacher_pool:
                    raise ConfigError(f"{where}: needs a teacher_pool (pool name: hub id or folder)")
                values = self.dimension_values(key, dim)
                if values is None or not all(isinstance(v, str) for v in values):
                    raise ConfigError(f"{where}: expected grid or choice of '+'-joined teacher_pool names, or grid: subsets")
                for value in values:
                    self.decode_teachers(value)
            elif key == "variant":
                if not spec.variants:
                    raise ConfigError(f"{where}: needs a variants mapping")
                values = self.dimension_values(key, dim)
                unknown = [v for v in values or [None] if v not in spec.variants]
                if unknown:
                    raise ConfigError(f"{where}: {unknown[0]!r} is not a variant ({', '.join(spec.variants)})")
            else:
                for value in dim.examples():
                    self._check_value(key, value, where)
        rows = spec.analysis.rows
        if rows not in ("auto", "trial") and rows not in spec.space:
            raise ConfigError(f"{src}: analysis.rows: expected auto, trial or a space key ({', '.join(spec.space)}), got {rows!r}")
        labels = self.row_labels()
        if labels is not None and self.chosen_row:
            labels = [*labels, CHOSEN_ROW]
        for a, b in spec.analysis.comparisons or []:
            missing = [r for r in (a, b) if labels is None or r not in labels]
            if missing:
                raise ConfigError(
                    f"{src}: analysis.comparisons: row {missing[0]!r} is not a row of this study "
                    f"({', '.join(labels) if labels else 'its rows are trials, which cannot be compared'})"
                )
        for name, overrides in (spec.variants or {}).items():
            for k, v in overrides.items():
                self._check_value(k, v, f"{src}: variants.{name}.{k}")
        self._check_points()

    def _check_points(self) -> None:
        """``search.points_to_evaluate``: Optuna's first trials, each naming a value of every dimension of the space."""
        spec, src = self.spec, self.source
        points = spec.search.points_to_evaluate or []
        if points and spec.search.searcher != "optuna":
            raise ConfigError(f"{src}: search.points_to_evaluate: needs searcher: optuna (a grid runs every point already)")
        for i, point in enumerate(points):
            where = f"{src}: search.points_to_evaluate[{i}]"
            missing, unknown = [k for k in spec.space if k not in point], [k for k in point if k not in spec.space]
            if unknown or missing:
                raise ConfigError(f"{where}: expected a value of each space key ({', '.join(spec.space)}); "
                                  + (f"{unknown[0]!r} is not one" if unknown else f"{missing[0]!r} is missing"))
            for key, value in point.items():
                dim = spec.space[key]
                values = self.dimension_values(key, dim)
                if values is not None and value not in values:
                    raise ConfigError(f"{where}.{key}: {value!r} is not among its choices ({', '.join(map(str, values))})")
                bounds = dim.uniform or dim.loguniform or dim.randint
                if bounds is not None and not (isinstance(value, (int, float)) and bounds[0] <= value <= bounds[1]):
                    raise ConfigError(f"{where}.{key}: {value!r} is outside its range [{bounds[0]}, {bounds[1]}]")
                if key not in ("teachers", "variant"):
                    self._check_value(key, value, f"{where}.{key}")

    def _check_value(self, key: str, value: Any, where: str) -> None:
        data = apply_overrides(self.base, [])
        try:
            set_dotted(data, key.split("."), value)
        except ConfigError:
            raise ConfigError(f"{where}: {key!r} is not a config key") from None
        try:
            ExperimentConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where)) from None


#: Top-level keys of a space file that ``--set`` addresses in the file itself (any other key: the base experiment).
SPACE_KEYS = ("name", "description", "search", "analysis", "teacher_pool", "variants", "space", "overrides")


def _set_keyed(raw: dict[str, Any], parts: list[str], value: Any, label: str) -> None:
    """``space.<dotted key>[.<distribution>]=value`` and ``overrides.<dotted key>=value``: the key itself has dots."""
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"--set {label}: {parts[0]!r} is not a section")
    if parts[0] == "space" and parts[-1] in DISTRIBUTIONS and len(parts) > 2:
        section[".".join(parts[1:-1])] = {parts[-1]: value}
    else:
        section[".".join(parts[1:])] = value


def absolutize_paths(base: dict[str, Any]) -> dict[str, Any]:
    """Local paths in the base experiment made absolute (trial drivers run in their own folders)."""
    base = json.loads(json.dumps(base))
    data = base.get("data") or {}
    for key in ("path", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().resolve())
    for section, key in (("student", "init_from"),):
        value = (base.get(section) or {}).get(key)
        if value and Path(value).expanduser().exists():
            base[section][key] = str(Path(value).expanduser().resolve())
    base["teachers"] = [
        str(Path(t).expanduser().resolve()) if isinstance(t, str) and Path(t).expanduser().exists() else t
        for t in base.get("teachers") or []
    ]
    return base


def load_space(path: str | Path, overrides: Iterable[str] = (), absolute_paths: bool = False) -> Space:
    """Read a space file (checked once; ``absolute_paths``: the base experiment's local paths made absolute, as a
    sweep's trial drivers, each in its own folder, need them). ``--set`` on a key of the file (``search.seeds=[0,1]``, ``teacher_pool.unilm=/path``,
    ``space.distill.temperature.grid=[1,2]``, ``variants.X={...}``) changes the study; any other key changes the
    base experiment (``data.task=rte``)."""
    path = Path(path)
    raw = read_yaml(path)
    experiment_sets = []
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in SPACE_KEYS:
            experiment_sets.append(text)
        elif parts[0] in ("space", "overrides") and len(parts) > 1:
            _set_keyed(raw, parts, value, text)
        else:
            set_dotted(raw, parts, value, label=text)
    try:
        spec = SpaceFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if spec.base is not None:
        base_path = (path.parent / spec.base).resolve()
        base = read_yaml(base_path)
    else:
        base = dict(spec.experiment or {})
    for key, value in spec.overrides.items():
        set_dotted(base, key.split("."), value, label=f"{path}: overrides.{key}")
    base = apply_overrides(base, experiment_sets)
    return Space(spec, absolutize_paths(base) if absolute_paths else base, str(path))
