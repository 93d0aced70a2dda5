"""Tune results → tables in the paper's layout (Markdown, CSV), bar charts like Fig. 3–5 (PNG), best trial.

``python -m mtbert_ray.analysis RESULTS_DIR [--out DIR]`` or, in a notebook,
``write_report(result_grid_or_path)`` / ``study_table(load_study(path))``.

Rows are what the study varies (``analysis.rows`` in the space file): teacher subsets (Table 3),
variants (ablations, ensembles: Fig. 3–5), or single trials (Optuna studies). Columns are the
student's validation metrics in percent, mean ± sample standard deviation over the trials of a
row (the seeds), with the number of trials.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtbert_ray.errors import ResultsError

SWEEP_FILE = "mtbert_sweep.json"
METRIC_COLUMNS = {"accuracy": "val_accuracy", "macro_f1": "val_macro_f1"}


@dataclass
class Study:
    path: Path
    meta: dict[str, Any]
    trials: pd.DataFrame  # one row per trial

    @property
    def row_key(self) -> str:
        return self.meta.get("row_key", "trial")

    @property
    def params(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("param:")]


@dataclass
class Report:
    out_dir: Path
    table: pd.DataFrame
    table_markdown: str
    files: list[Path] = field(default_factory=list)
    best: dict[str, Any] | None = None


def load_study(source) -> Study:
    """A study from an experiment folder (``<storage>/sweeps/<name>``) or a Tune ``ResultGrid``."""
    path = Path(getattr(source, "experiment_path", source)).expanduser()
    meta_file = path / SWEEP_FILE
    if not meta_file.is_file():
        raise ResultsError(f"{path}: not an mtbert-ray sweep folder (no {SWEEP_FILE})")
    meta = json.loads(meta_file.read_text())
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(path))
    except Exception as exc:  # no experiment state yet
        raise ResultsError(f"{path}: holds no Tune results yet ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status}
        for key, value in (trial.config or {}).items():
            row[f"param:{key}"] = value
        for name, column in METRIC_COLUMNS.items():
            row[name] = last.get(column, math.nan)
        row["epoch"] = last.get("epoch", math.nan)
        row["done"] = bool(last.get("done", False))
        row["teacher_mean_accuracy"] = last.get("teacher_mean_accuracy", math.nan)
        row["student_dir"] = last.get("student_dir")
        rows.append(row)
    trials = pd.DataFrame(rows)
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", *METRIC_COLUMNS, "done", "student_dir"])
    return Study(path, meta, trials)


def _row_label(study: Study, row: pd.Series) -> str:
    key = study.row_key
    if key != "trial" and f"param:{key}" in row:
        return str(row[f"param:{key}"])
    return str(row["trial_id"])


def _row_order(study: Study, labels: list[str]) -> list[str]:
    spec = study.meta.get("spec", {})
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


def study_table(study: Study, metrics: list[str] | None = None) -> pd.DataFrame:
    """Rows × metrics: mean and std (in %, over the row's trials) and n; finished trials only."""
    metrics = metrics or list(study.meta.get("spec", {}).get("analysis", {}).get("metrics") or METRIC_COLUMNS)
    done = study.trials[study.trials["done"] == True] if "done" in study.trials else study.trials  # noqa: E712
    if done.empty:
        return pd.DataFrame(columns=["row", *[f"{m}_mean" for m in metrics], *[f"{m}_std" for m in metrics], "n"])
    done = done.assign(row=[_row_label(study, r) for _, r in done.iterrows()])
    records = []
    for label, group in done.groupby("row", sort=False):
        rec: dict[str, Any] = {"row": label, "n": len(group)}
        for m in metrics:
            values = group[m].astype(float) * 100
            rec[f"{m}_mean"] = float(values.mean())
            rec[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if study.row_key == "trial":
            for p in study.params:
                rec[p.removeprefix("param:")] = group[p].iloc[0]
        records.append(rec)
    table = pd.DataFrame(records)
    if study.row_key == "trial":
        table = table.sort_values(f"{metrics[0]}_mean", ascending=False, kind="stable")
    else:
        order = _row_order(study, table["row"].tolist())
        table = table.set_index("row").loc[order].reset_index()
    return table.reset_index(drop=True)


def table_markdown(table: pd.DataFrame, study: Study, metrics: list[str] | None = None) -> str:
    metrics = metrics or [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    header = {"teachers": "Teachers", "variant": "Method", "trial": "Trial"}.get(study.row_key, study.row_key)
    params = [c for c in table.columns if c not in ("row", "n") and not c.endswith(("_mean", "_std"))]
    cols = [header, *params, *[m.replace("macro_f1", "Macro-F").replace("accuracy", "Acc.") for m in metrics], "n"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [str(r["row"])]
        cells += [_fmt_param(r[p]) for p in params]
        cells += [f"{r[f'{m}_mean']:.2f} ± {r[f'{m}_std']:.2f}" for m in metrics]
        cells.append(str(int(r["n"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _bar_chart(table: pd.DataFrame, study: Study, metrics: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, m in zip(axes[0], metrics):
        means, stds = table[f"{m}_mean"].to_numpy(), table[f"{m}_std"].to_numpy()
        x = range(len(table))
        bars = ax.bar(x, means, yerr=stds, capsize=4, color=[colors[i % 10] for i in x])
        for bar, value in zip(bars, means):
            ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        low = max(0.0, float((means - stds).min()) - 3)
        high = float((means + stds).max()) + 2
        ax.set_ylim(low, high)
        ax.set_xticks(list(x), table["row"].tolist(), rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(m.replace("_", " ").replace("macro f1", "Macro-F") + " (%)")
        ax.set_title(m.replace("_", "-"))
    fig.suptitle(study.meta.get("name", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scatter(study: Study, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.trials[study.trials["done"] == True]  # noqa: E712
    numeric = [p for p in study.params if pd.api.types.is_numeric_dtype(done[p]) and done[p].nunique() > 1]
    if not numeric:
        numeric = study.params[:1]
    space = study.meta.get("spec", {}).get("space", {})
    fig, axes = plt.subplots(1, max(len(numeric), 1), figsize=(4.2 * max(len(numeric), 1), 3.6), squeeze=False)
    for ax, p in zip(axes[0], numeric):
        ax.scatter(done[p], done[metric] * 100)
        key = p.removeprefix("param:")
        if (space.get(key) or {}).get("loguniform"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} (%)")
    fig.suptitle(f"{study.meta.get('name', '')}: {metric} per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_trial(study: Study, metric: str = "accuracy") -> dict[str, Any] | None:
    done = study.trials[study.trials["done"] == True]  # noqa: E712
    if done.empty:
        return None
    row = done.sort_values(metric, ascending=False, kind="stable").iloc[0]
    out = {
        "trial_id": row["trial_id"],
        "params": {p.removeprefix("param:"): _jsonable(row[p]) for p in study.params},
        "metrics": {m: float(row[m]) for m in METRIC_COLUMNS},
        "student_dir": row["student_dir"],
    }
    run_dir = Path(row["student_dir"]).parent if row["student_dir"] else None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        out["config_file"] = str(run_dir / "config.yaml")
        out["config"] = (run_dir / "config.yaml").read_text()
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def write_report(source, out: str | Path | None = None) -> Report:
    """Write ``table.md``, ``table.csv``, ``trials.csv``, a PNG chart and ``best.json``; return them."""
    study = load_study(source)
    out_dir = Path(out) if out is not None else study.path / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = list(study.meta.get("spec", {}).get("analysis", {}).get("metrics") or METRIC_COLUMNS)
    table = study_table(study, metrics)
    markdown = table_markdown(table, study, metrics) if not table.empty else "(no finished trials)"
    name = study.meta.get("name", study.path.name)
    files = []
    (out_dir / "table.md").write_text(f"# {name}\n\n{markdown}\n")
    table.to_csv(out_dir / "table.csv", index=False)
    study.trials.to_csv(out_dir / "trials.csv", index=False)
    files += [out_dir / "table.md", out_dir / "table.csv", out_dir / "trials.csv"]
    if not table.empty:
        chart = out_dir / ("chart.png" if study.row_key != "trial" else "trials.png")
        if study.row_key == "trial":
            _scatter(study, metrics[0], chart)
        else:
            _bar_chart(table, study, metrics, chart)
        files.append(chart)
    best = best_trial(study, metrics[0])
    (out_dir / "best.json").write_text(json.dumps(best, indent=2, default=str))
    files.append(out_dir / "best.json")
    return Report(out_dir, table, markdown, files, best)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtbert_ray.analysis", description="Tables and plots of a finished (or running) sweep.")
    parser.add_argument("results", help="sweep folder (<storage>/sweeps/<name>)")
    parser.add_argument("--out", default=None, help="output folder (default <results>/analysis)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    from mtbert_ray.errors import run_cli

    def body() -> int:
        report = write_report(args.results, args.out)
        print(report.table_markdown)
        if report.best:
            print(f"best trial {report.best['trial_id']}: {report.best['metrics']}  student {report.best['student_dir']}")
        print(f"written: {', '.join(str(f) for f in report.files)}")
        return 0

    run_cli(body, args.debug)


if __name__ == "__main__":
    main()
