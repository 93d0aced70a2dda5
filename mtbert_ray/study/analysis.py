"""Tune results → tables in the paper's layout (Markdown, CSV), bar charts like Fig. 3–5 (PNG), best trial.

``python -m mtbert_ray.analysis RESULTS_DIR [--out DIR]`` or, in a notebook,
``write_report(result_grid_or_path)`` / ``study_table(load_study(path))``.

Rows are what the study varies (``analysis.rows`` in the space file): teacher subsets (Table 3),
variants (ablations, ensembles: Fig. 3–5), or single trials (Optuna studies). Every number is the
student selected on validation (``select.metric``) and then measured on test: columns are the test
(and validation) metrics in percent, mean ± sample standard deviation over the row's seeds, with n
(a row of one seed says so instead of showing ±0). ``comparisons`` are paired by seed: the mean of
(a − b) over the seeds both rows finished, with its 95 % t-interval, and — from the runs' per-example test
predictions — a paired bootstrap interval over seeds and test sentences (``paired_bootstrap``). Trials a scheduler stopped
early are counted apart ("stopped early"), never averaged in and never chosen as best.
"""
from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray.tune import ExperimentAnalysis

from mtbert_ray.common.errors import ConfigError, DataError, ResultsError
from mtbert_ray.common.metric_names import (
    DEFAULT_METRICS,
    METRICS,
    RETENTION,
    Split,
    best_teacher_key,
    metric_key,
    stat_column,
    teacher_mean_key,
)
from mtbert_ray.config import validate_config
from mtbert_ray.config.space import CHOSEN_ROW, wants_chosen_row
from mtbert_ray.data.sources import split_column
from mtbert_ray.store.lock import FolderLock
from mtbert_ray.study.record import RUNS_DIR, SWEEP_FILE, SweepRecord, read_sweep_record

SPLITS = (Split.TEST, Split.VALIDATION)
LABELS = {"accuracy": "Acc.", "macro_f1": "Macro-F", "mcc": "MCC", "f1": "F1"}
#: Two-sided 95 % Student-t critical values t_{0.975, df} for df = 1..30.
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_critical(df: int) -> float:
    """t_{0.975, df}: the table for df ≤ 30, the Cornish–Fisher expansion beyond (error < 1e-4)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= 30:
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) \
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, sample std, 95 % half-width t_{n−1} · std / √n); std and half-width None for one value."""
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    if n < 2:
        return mean, None, None
    std = statistics.stdev(values)
    return mean, std, t_critical(n - 1) * std / math.sqrt(n)


BOOTSTRAP_DRAWS = 2000
PREDICTIONS_FILE = "predictions/test.tsv"  # in a run folder: index, prediction, label of every test example


def test_correctness(student_dir: str | Path | None) -> pd.Series | None:
    """1.0 / 0.0 per test example (indexed by example id) of the student of a run folder, from the run's
    ``predictions/test.tsv``; None when the run has none (an older run, or an unlabelled test split)."""
    if not student_dir:
        return None
    path = Path(student_dir).parent / PREDICTIONS_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "label" not in frame.columns:
        return None
    return pd.Series((frame["prediction"] == frame["label"]).astype(float).to_numpy(), index=frame["index"].astype(int))


def paired_bootstrap(diffs: Any, draws: int = BOOTSTRAP_DRAWS, seed: int = 0, groups: Any = None) -> tuple[float, float]:
    """95 % percentile interval of the mean paired difference, resampling seeds and test sentences — or, with
    ``groups``, whole groups of sentences (the films of rt_polarity, the news ids of MIND).

    ``diffs`` [S, M]: correct_a − correct_b of seed s on sentence m (both rows scored on the same M sentences).
    Each draw takes S seeds and M sentences with replacement (the same sentences for every seed, so the pairing by
    sentence is kept) and averages D[seeds][:, sentences]; the interval is the 2.5 / 97.5 % quantiles × 100 (points).
    ``groups`` [M] (a group id per sentence): each draw takes G of the G groups with replacement instead, and averages
    over every sentence of the groups drawn — Σ_g D[seeds, g] / (S · Σ_g n_g) — so sentences of one film, which are not
    independent, move together. Unlike a t-interval over seed means, both count the test set's sampling as well as
    the seeds' spread.
    """
    rng = np.random.default_rng(seed)
    s, m = diffs.shape
    means = np.empty(draws)
    if groups is not None:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1]
        n_groups = int(codes.max()) + 1 if len(codes) else 0
        sums = np.stack([np.bincount(codes, weights=row, minlength=n_groups) for row in diffs])  # [S, G]
        sizes = np.bincount(codes, minlength=n_groups).astype(float)
        for k in range(draws):
            picked = rng.integers(0, n_groups, n_groups)
            means[k] = sums[rng.integers(0, s, s)][:, picked].sum() / (s * sizes[picked].sum())
    else:
        for k in range(draws):
            rows = diffs[rng.integers(0, s, s)]
            means[k] = rows[:, rng.integers(0, m, m)].mean()
    low, high = np.quantile(means, [0.025, 0.975])
    return float(100 * low), float(100 * high)


@dataclass
class Study:
    path: Path
    record: SweepRecord
    trials: pd.DataFrame  # one row per trial

    @property
    def row_key(self) -> str:
        return self.record.row_key

    @property
    def params(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("param:")]

    @property
    def metrics(self) -> list[str]:
        spec = self.record.spec.get("analysis") or {}
        return list(spec.get("metrics") or self.record.metrics or DEFAULT_METRICS)

    @property
    def select(self) -> dict[str, str]:
        return self.record.select.model_dump()

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["finished"]]

    @property
    def seed_key(self) -> str:
        """The trial column the seeds of a row are in: ``distill.seed`` when the study varies it (students of the
        same co-finetuned teachers), else the experiment ``seed``."""
        return "param:distill.seed" if "param:distill.seed" in self.trials else "param:seed"


@dataclass
class Report:
    out_dir: Path
    table: pd.DataFrame
    table_markdown: str
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: list[Path] = field(default_factory=list)
    best: dict[str, Any] | None = None


def load_study(source, *parts) -> Study:
    """A study from an experiment folder (``<storage>/sweeps/<name>``) or a Tune ``ResultGrid``.

    ``parts``: further sweep folders of the same study, run later under other names (e.g. the space file with
    ``--set space.variant.grid=[...]`` for the rows still missing); their trials are added to the first's, whose
    record (rows, comparisons, selection) is the study's. Every part must group rows by the same key."""
    study = _load_one(source)
    for part in parts:
        more = _load_one(part)
        if more.row_key != study.row_key:
            raise ResultsError(f"{more.path}: rows are grouped by {more.row_key!r}, not {study.row_key!r} as in {study.path}")
        study.trials = pd.concat([study.trials, more.trials], ignore_index=True)
        study.trials["finished"] = study.trials["finished"].astype(bool)
    return study


def _load_one(source) -> Study:
    path = Path(getattr(source, "experiment_path", source)).expanduser()
    record = read_sweep_record(path)

    try:
        analysis = ExperimentAnalysis(str(path))
    except Exception as exc:  # no experiment state yet
        raise ResultsError(f"{path}: holds no Tune results yet ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    metrics = list(record.metrics or DEFAULT_METRICS)
    for extra in METRICS:
        if extra not in metrics:
            metrics.append(extra)
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        finished = bool(last.get("finished"))
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        for key, value in (trial.config or {}).items():
            row[f"param:{key}"] = value
        for name in metrics:
            for split in SPLITS:
                key = metric_key(split, name)
                row[key] = last.get(key, math.nan) if (finished or split is Split.VALIDATION) else math.nan
        row["epoch"] = last.get("epoch", math.nan)
        row["finished"] = finished
        row["stopped_early"] = not finished and trial.status == "TERMINATED"
        row["errored"] = trial.status == "ERROR"
        for split in SPLITS:
            row[teacher_mean_key(split, "accuracy")] = last.get(teacher_mean_key(split, "accuracy"), math.nan)
        row["student_dir"] = _in_moved_sweep(last.get("student_dir"), path) if finished else None
        row.update(_best_teacher(last, path) if finished else {})
        rows.append(row)
    trials = pd.DataFrame(rows)
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", "finished", "stopped_early", "errored", "student_dir"])
    trials["finished"] = trials["finished"].astype(bool)
    return Study(path, record, trials)


def _best_teacher(last: dict[str, Any], sweep: Path) -> dict[str, Any]:
    """A finished trial's best teacher (chosen on validation), its accuracy and the student's retention of it: from the
    trial's report, or — for studies run before the report carried them — from its run's ``result.json``."""
    from mtbert_ray.experiment.results import ExperimentResult  # deferred: only older studies need the run record

    out: dict[str, Any] = {"best_teacher": last.get("best_teacher")}
    if out["best_teacher"] is not None:
        for split in SPLITS:
            out[best_teacher_key(split, "accuracy")] = last.get(best_teacher_key(split, "accuracy"), math.nan)
        out[RETENTION] = last.get(RETENTION, math.nan)
        return out
    run_dir = _in_moved_sweep(last.get("run_dir"), sweep)
    try:
        result = ExperimentResult.from_json(json.loads((Path(run_dir) / "result.json").read_text()))
    except (OSError, TypeError, ValueError, KeyError):
        return {}
    best = result.best_teacher()
    if best is None:
        return {}
    out["best_teacher"] = best
    for split in SPLITS:
        value = result.teachers[best].metric("accuracy", split)
        out[best_teacher_key(split, "accuracy")] = math.nan if value is None else value
    retention = result.retention()
    out[RETENTION] = math.nan if retention is None else retention
    return out


def _in_moved_sweep(student_dir: str | None, sweep: Path) -> str | None:
    """A trial's student folder under the sweep folder read, ``<sweep>/runs/<trial>/student``, when the recorded
    ``…/runs/<trial>/student`` names another place whose run folder this sweep holds too (the folder was moved or
    copied since: from a cluster's storage to a laptop, or restored from an archive); else as recorded."""
    if not student_dir:
        return student_dir
    parts = Path(student_dir).parts
    if RUNS_DIR not in parts:
        return student_dir
    start = len(parts) - 1 - parts[::-1].index(RUNS_DIR)
    here = sweep.joinpath(*parts[start:])
    return str(here) if here.parent.is_dir() else student_dir


def _row_label(study: Study, row: pd.Series) -> str:
    key = study.row_key
    if key != "trial" and f"param:{key}" in row:
        return str(row[f"param:{key}"])
    return str(row["trial_id"])


def _row_order(study: Study, labels: list[str]) -> list[str]:
    spec = study.record.spec
    if study.row_key == "variant":
        order = list(spec.get("variants") or {})
        return [v for v in order if v in labels] + [v for v in labels if v not in order]
    if study.row_key == "teachers":
        pool = list(spec.get("teacher_pool") or {})

        def rank(label: str):
            parts = label.split("+")
            return (len(parts), [pool.index(p) if p in pool else len(pool) for p in parts])

        return sorted(labels, key=rank)
    return labels


def chosen_on_validation(study: Study, trials: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the finished trial best on validation by the study's selection metric among every row: what a user
    following validation ships. Its test is what such a study reports, never below its best single-teacher arm on
    validation (up to selection noise on test). Ties: the first trial."""
    done = trials[trials["finished"]]
    column, key = metric_key(Split.VALIDATION, study.select["metric"]), study.seed_key
    if done.empty or column not in done or key not in done:
        return done.iloc[0:0]
    lowest = study.select.get("mode") == "min"
    picked = [(group[column].idxmin() if lowest else group[column].idxmax())
              for _, group in done.dropna(subset=[column]).groupby(key, sort=True)]
    return done.loc[picked]


def _labelled(study: Study, trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with their row labels, and (``analysis.chosen_row``) the trials validation chose, again, as the row
    ``chosen on validation``."""
    trials = trials.assign(row=[_row_label(study, r) for _, r in trials.iterrows()])
    if not wants_chosen_row((study.record.spec.get("analysis") or {}).get("chosen_row"), study.row_key):
        return trials
    chosen = chosen_on_validation(study, trials)
    return pd.concat([trials, chosen.assign(row=CHOSEN_ROW)], ignore_index=True) if not chosen.empty else trials


def study_table(study: Study, metrics: list[str] | None = None) -> pd.DataFrame:
    """Rows × (test, val) × metrics: mean, std, 95 % half-width (in %, over the row's finished seeds), n and
    the number of trials stopped early."""
    metrics = metrics or study.metrics
    trials = study.trials
    if trials.empty:
        return pd.DataFrame(columns=["row", "n", "stopped_early"])
    trials = _labelled(study, trials)
    records = []
    for label, group in trials.groupby("row", sort=False):
        done = group[group["finished"]]
        rec: dict[str, Any] = {"row": label, "n": len(done), "stopped_early": int(group["stopped_early"].sum())}
        for split in SPLITS:
            for m in metrics:
                values = [float(v) * 100 for v in done[metric_key(split, m)] if not pd.isna(v)]
                mean, std, half = mean_interval(values)
                for statistic, value in (("mean", mean), ("std", std), ("ci", half)):
                    rec[stat_column(split, m, statistic)] = value
        for column in (RETENTION, best_teacher_key(Split.TEST, "accuracy")):
            values = [float(v) * 100 for v in done.get(column, []) if not pd.isna(v)]
            mean, std, half = mean_interval(values)
            for statistic, value in (("mean", mean), ("std", std), ("ci", half)):
                rec[f"{column}_{statistic}"] = value
        if study.row_key == "trial":
            for p in study.params:
                rec[p.removeprefix("param:")] = group[p].iloc[0]
        records.append(rec)
    table = pd.DataFrame(records)
    select = stat_column(Split.VALIDATION, study.select["metric"], "mean")
    if study.row_key == "trial":
        ascending = study.select.get("mode") == "min"
        table = table.sort_values(select, ascending=ascending, kind="stable", na_position="last")
    else:
        order = _row_order(study, table["row"].tolist())
        table = table.set_index("row").loc[order].reset_index()
    last = table["row"] == CHOSEN_ROW  # what validation chose, below the rows it chose from
    return pd.concat([table[~last], table[last]]).reset_index(drop=True)


def comparison_table(study: Study, comparisons: list[tuple[str, str]] | None = None,
                     metrics: list[str] | None = None, groups: pd.Series | None = None) -> pd.DataFrame:
    """Paired differences a − b on test (in points), over the seeds both rows finished, with 95 % intervals: the
    t-interval over seeds, the bootstrap over seeds × sentences and, with ``groups`` (example id → group), the
    bootstrap over seeds × groups. A seed a row finished more than once (a study run in parts that repeats a row)
    counts once, as the mean."""
    metrics = metrics or study.metrics
    comparisons = comparisons if comparisons is not None else [tuple(c) for c in study.record.comparisons]
    done = study.finished
    key = study.seed_key
    if done.empty or not comparisons or key not in done:
        return pd.DataFrame(columns=["a", "b", "pairs"])
    done = _labelled(study, done)
    records = []
    columns = [metric_key(Split.TEST, m) for m in metrics]
    for a, b in comparisons:
        left = done[done["row"] == a].groupby(key)[columns].mean()
        right = done[done["row"] == b].groupby(key)[columns].mean()
        seeds = sorted(set(left.index) & set(right.index))
        rec: dict[str, Any] = {"a": a, "b": b, "pairs": len(seeds)}
        for m in metrics:
            col = metric_key(Split.TEST, m)
            diffs = [100 * (float(left.loc[s, col]) - float(right.loc[s, col])) for s in seeds
                     if not pd.isna(left.loc[s, col]) and not pd.isna(right.loc[s, col])]
            mean, _, half = mean_interval(diffs)
            rec[f"{m}_diff"], rec[f"{m}_ci"] = mean, half
            rec[f"{m}_low"] = mean - half if half is not None else math.nan
            rec[f"{m}_high"] = mean + half if half is not None else math.nan
        rec["accuracy_boot_low"], rec["accuracy_boot_high"] = _bootstrap_accuracy(done, a, b, key, seeds)
        if groups is not None:
            rec["accuracy_group_boot_low"], rec["accuracy_group_boot_high"] = _bootstrap_accuracy(done, a, b, key, seeds, groups)
        records.append(rec)
    return pd.DataFrame(records)


def _bootstrap_accuracy(done: pd.DataFrame, a: str, b: str, key: str, seeds: list,
                        groups: pd.Series | None = None) -> tuple[float, float]:
    """``paired_bootstrap`` of test accuracy a − b over the seeds both rows finished, from the runs' per-example
    predictions (NaN when a run has none, or the rows were scored on different sentences); ``groups``: example id →
    group, resampled instead of sentences."""
    rows = []
    for seed in seeds:
        pair = []
        for row in (a, b):
            first = done[(done["row"] == row) & (done[key] == seed)].iloc[0]
            pair.append(test_correctness(first["student_dir"]))
        if pair[0] is None or pair[1] is None or not pair[0].index.equals(pair[1].index):
            return math.nan, math.nan
        rows.append((pair[0] - pair[1]).to_numpy())
    if not rows or len({len(r) for r in rows}) != 1:
        return math.nan, math.nan
    if groups is not None:
        ids = pair[0].index  # every seed's pair is scored on the same sentences (checked above by their count)
        if not set(ids) <= set(groups.index):
            return math.nan, math.nan
        return paired_bootstrap(np.stack(rows), groups=groups.loc[ids].to_numpy())
    return paired_bootstrap(np.stack(rows))


def groups_of_test_sentences(study: Study, column: str) -> pd.Series:
    """Example id of each test sentence → its group, from column ``column`` of the study's data (its base experiment)."""
    config = validate_config(study.record.base, source=f"{study.path / SWEEP_FILE}: base")
    return split_column(config.data, "test", column)


def _groups_for(study: Study, group_column: str | None) -> pd.Series | None:
    """The test groups to resample: ``group_column`` if given (its errors raised), else the study's
    ``analysis.group_column`` — skipped with a warning where its data is not on this machine (a restored archive)."""
    if group_column:
        return groups_of_test_sentences(study, group_column)
    column = (study.record.spec.get("analysis") or {}).get("group_column")
    if not column:
        return None
    try:
        return groups_of_test_sentences(study, column)
    except (DataError, ConfigError) as err:
        warnings.warn(f"analysis.group_column {column!r}: no grouped bootstrap ({err})", stacklevel=2)
        return None


def _cell(mean: float, std: float | None, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "—"
    if n == 1 or std is None or pd.isna(std):
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {std:.2f}"


def table_markdown(table: pd.DataFrame, study: Study, metrics: list[str] | None = None) -> str:
    metrics = metrics or study.metrics
    header = {"teachers": "Teachers", "variant": "Method", "trial": "Trial"}.get(study.row_key, study.row_key)
    params = [c for c in table.columns if c not in ("row", "n", "stopped_early") and not c.endswith(("_mean", "_std", "_ci"))]
    cols = [header, *params]
    cols += [f"{LABELS.get(m, m)} test" for m in metrics] + [f"{LABELS.get(m, m)} val" for m in metrics]
    kept = f"{RETENTION}_mean" in table and table[f"{RETENTION}_mean"].notna().any()
    if kept:
        cols += ["best teacher Acc. test", "kept of best teacher (%)"]
    cols += ["n"]
    stopped = int(table["stopped_early"].sum()) if "stopped_early" in table else 0
    if stopped:
        cols.append("stopped early")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        n = int(r["n"])
        label = str(r["row"]) + (" (stopped early)" if study.row_key == "trial" and n == 0 and r["stopped_early"] else "")
        cells = [label, *[_fmt_param(r[p]) for p in params]]
        cells += [_cell(r[stat_column(split, m, "mean")], r[stat_column(split, m, "std")], n) for split in SPLITS for m in metrics]
        if kept:
            teacher = best_teacher_key(Split.TEST, "accuracy")
            cells += [_cell(r[f"{teacher}_mean"], r[f"{teacher}_std"], n), _cell(r[f"{RETENTION}_mean"], r[f"{RETENTION}_std"], n)]
        cells.append(str(n))
        if stopped:
            cells.append(str(int(r["stopped_early"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    if table.empty:
        return ""
    boot = "accuracy_boot_low" in table and table["accuracy_boot_low"].notna().any()
    grouped = "accuracy_group_boot_low" in table and table["accuracy_group_boot_low"].notna().any()
    cols = ["Comparison (test, a − b, points)", *[f"Δ {LABELS.get(m, m)} [95% interval]" for m in metrics],
            *(["Δ Acc. [95% bootstrap, seeds × sentences]"] if boot else []),
            *(["Δ Acc. [95% bootstrap, seeds × groups]"] if grouped else []), "paired seeds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [f"{r['a']} − {r['b']}"]
        for m in metrics:
            if r["pairs"] == 0 or pd.isna(r[f"{m}_diff"]):
                cells.append("no seeds in common")
            elif pd.isna(r[f"{m}_ci"]):
                cells.append(f"{r[f'{m}_diff']:+.2f} (1 pair: no interval)")
            else:
                cells.append(f"{r[f'{m}_diff']:+.2f} [{r[f'{m}_low']:+.2f}, {r[f'{m}_high']:+.2f}]")
        if boot:
            cells.append("—" if pd.isna(r["accuracy_boot_low"]) else
                         f"{r['accuracy_diff']:+.2f} [{r['accuracy_boot_low']:+.2f}, {r['accuracy_boot_high']:+.2f}]")
        if grouped:
            cells.append("—" if pd.isna(r["accuracy_group_boot_low"]) else
                         f"{r['accuracy_diff']:+.2f} [{r['accuracy_group_boot_low']:+.2f}, "
                         f"{r['accuracy_group_boot_high']:+.2f}]")
        cells.append(str(int(r["pairs"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _bar_chart(table: pd.DataFrame, study: Study, metrics: list[str], path: Path) -> None:
    """Test metrics per row; error bars: the 95 % interval over seeds (none for a single seed)."""
    import matplotlib  # deferred: only plotting needs it (and its backend is chosen here, before pyplot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, m in zip(axes[0], metrics):
        means = table[stat_column(Split.TEST, m, "mean")].astype(float).to_numpy()
        errors = table[stat_column(Split.TEST, m, "ci")].astype(float).fillna(0.0).to_numpy()
        x = range(len(table))
        bars = ax.bar(x, means, yerr=errors, capsize=4, color=[colors[i % 10] for i in x])
        for bar, value, n in zip(bars, means, table["n"]):
            if not math.isnan(value):
                ax.annotate(f"{value:.2f}\nn={int(n)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        finite = [v for v in means - errors if not math.isnan(v)]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 3), max(v for v in means + errors if not math.isnan(v)) + 3)
        ax.set_xticks(list(x), table["row"].tolist(), rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{LABELS.get(m, m)} on test (%)")
        ax.set_title(f"test {m.replace('_', '-')} (error bars: 95% interval)", fontsize=9)
    fig.suptitle(study.record.name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scatter(study: Study, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.finished
    numeric = [p for p in study.params if pd.api.types.is_numeric_dtype(done[p]) and done[p].nunique() > 1]
    if not numeric:
        numeric = study.params[:1]
    space = study.record.spec.get("space") or {}
    fig, axes = plt.subplots(1, max(len(numeric), 1), figsize=(4.2 * max(len(numeric), 1), 3.6), squeeze=False)
    for ax, p in zip(axes[0], numeric):
        ax.scatter(done[p], done[metric_key(Split.VALIDATION, metric)] * 100, label="validation (selects)")
        ax.scatter(done[p], done[metric_key(Split.TEST, metric)] * 100, marker="x", label="test")
        key = p.removeprefix("param:")
        if (space.get(key) or {}).get("loguniform"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} (%)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{study.record.name}: {metric} per finished trial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_trial(study: Study) -> dict[str, Any] | None:
    """The finished trial best by the validation selection metric (never a trial stopped early), with its test scores."""
    done = study.finished
    metric = metric_key(Split.VALIDATION, study.select["metric"])
    if done.empty or metric not in done or done[metric].isna().all():
        return None
    row = done.sort_values(metric, ascending=study.select.get("mode") == "min", kind="stable").iloc[0]
    out = {
        "trial_id": row["trial_id"],
        "selected_by": metric,
        "params": {p.removeprefix("param:"): _jsonable(row[p]) for p in study.params},
        **{split.value: {m: _jsonable(row[metric_key(split, m)]) for m in study.metrics} for split in (Split.VALIDATION, Split.TEST)},
        "student_dir": row["student_dir"],
        "row": _row_label(study, row),
    }
    out["metrics"] = out["validation"]  # earlier name of the validation scores
    run_dir = Path(row["student_dir"]).parent if row["student_dir"] else None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        out["config_file"] = str(run_dir / "config.yaml")
        out["config"] = (run_dir / "config.yaml").read_text()
    return out


def seed_summary(report: "Report") -> dict[str, str]:
    """The best trial's row over its seeds, for its student's model card: ``{"test accuracy": "80.1 ± 1.2 % (95 %
    interval, 5 seeds)"}`` (validation too); empty when the row has one seed."""
    best = report.best
    if not best or report.table.empty or "row" not in report.table:
        return {}
    rows = report.table[report.table["row"] == best.get("row")]
    if rows.empty or int(rows.iloc[0]["n"]) < 2:
        return {}
    rec, out = rows.iloc[0], {}
    for split in SPLITS:
        name = split.value
        for metric in best.get(Split.TEST.value, {}):
            mean, half = rec.get(stat_column(split, metric, "mean")), rec.get(stat_column(split, metric, "ci"))
            if mean is not None and not pd.isna(mean):
                spread = f" ± {half:.2f}" if half is not None and not pd.isna(half) else ""
                out[f"{name} {metric}"] = f"{mean:.2f}{spread} % (95 % interval, {int(rec['n'])} seeds of row {best['row']!r})"
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(source, out: str | Path | None = None, parts: tuple = (),
                 comparisons: list[tuple[str, str]] | None = None, group_column: str | None = None,
                 groups: pd.Series | None = None) -> Report:
    """Write ``table.md``, ``table.csv``, ``comparisons.csv``, ``trials.csv``, a PNG chart and ``best.json``
    (of ``source`` and the further ``parts`` of the same study, see ``load_study``). ``comparisons``: the pairs
    (a, b) to compare, default the study's ``analysis.comparisons`` (a study whose later parts added rows passes
    the pairs of its current space file). The comparisons' bootstrap also resamples groups of test sentences: those
    of ``group_column`` of the study's data (default its ``analysis.group_column``), or ``groups`` (example id →
    group) where the data has moved since."""
    study = load_study(source, *parts)
    out_dir = Path(out) if out is not None else study.path / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = study.metrics
    table = study_table(study, metrics)
    has_rows = not table.empty and int(table["n"].sum()) > 0
    markdown = table_markdown(table, study, metrics) if has_rows else "(no finished trials)"
    groups = groups if groups is not None else _groups_for(study, group_column)
    comparisons = comparison_table(study, comparisons, metrics=metrics, groups=groups)
    compared = comparisons_markdown(comparisons, metrics)
    name = study.record.name or study.path.name
    select = study.select
    note = (f"Student checkpoints selected on validation {select['metric']} ({select['mode']}); test = the same "
            "checkpoints on the test split. Mean ± sample std over seeds (n); paired comparisons: mean difference over "
            "the seeds both rows finished, with its 95 % t-interval, and (when the runs wrote their per-sentence test "
            "predictions) a 95 % paired bootstrap over seeds × test sentences.")
    text = f"# {name}\n\n{note}\n\n{markdown}\n"
    if compared:
        text += f"\n## Paired comparisons\n\n{compared}\n"
    with FolderLock(out_dir, "analysis folder"):  # one writer: a second analysis of the same sweep is refused
        files = []
        (out_dir / "table.md").write_text(text)
        table.to_csv(out_dir / "table.csv", index=False)
        comparisons.to_csv(out_dir / "comparisons.csv", index=False)
        study.trials.to_csv(out_dir / "trials.csv", index=False)
        files += [out_dir / "table.md", out_dir / "table.csv", out_dir / "comparisons.csv", out_dir / "trials.csv"]
        if has_rows:
            chart = out_dir / ("chart.png" if study.row_key != "trial" else "trials.png")
            if study.row_key == "trial":
                _scatter(study, select["metric"], chart)
            else:
                _bar_chart(table, study, metrics, chart)
            files.append(chart)
        best = best_trial(study)
        (out_dir / "best.json").write_text(json.dumps(best, indent=2, default=str))
        files.append(out_dir / "best.json")
    return Report(out_dir, table, markdown + (f"\n\n{compared}" if compared else ""), comparisons, files, best)
