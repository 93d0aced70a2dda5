"""Which student to ship: the accuracy–latency frontier of a study's students on each runtime, and a budget picker.

After the trials (never during them: trials running at once would skew each other's clocks), every finished trial's
student is exported to ONNX and int8 with the deploy gate (``deploy.gate``: a runtime whose validation accuracy falls
more than the tolerance below PyTorch's is not kept), then every (student, runtime) — and each trial's co-finetuned
teachers on the same runtimes — is timed in this one process, with fixed threads, on the same fixed real test
sentences, the repeats interleaved in a seeded shuffled order so that a slow moment of the machine falls on every
model alike: batch-1 latency (p50, p95 ms) and batch-32 throughput (rows/s).

The frontier is the set of (student, runtime) rows no other row beats on both validation accuracy and batch-1 p50
latency (selection on validation; test is reported beside it). ``retention`` = the student's test accuracy ÷ its best
teacher's (the co-finetuned teacher with the best validation accuracy, same split); ``speed-up`` = that teacher's p50
÷ the student's on the same runtime. ``pick`` chooses, within a latency budget (and a minimum *validation* retention),
the row with the best validation accuracy — never by test.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.common.metric_names import Split, metric_key
from mtbert_ray.config import load_config
from mtbert_ray.data.sources import load_source
from mtbert_ray.deploy.export import export_onnx
from mtbert_ray.deploy.onnx import INT8_FILE, ONNX_FILE, REPORT_FILE
from mtbert_ray.deploy.runtimes import load_runtime
from mtbert_ray.experiment.results import ExperimentResult
from mtbert_ray.models.hub import load_tokenizer
from mtbert_ray.models.student_io import read_student_meta
from mtbert_ray.models.teachers import TeacherEnsemble
from mtbert_ray.study.analysis import load_study

RUNTIMES = ("torch", "onnx", "onnx-int8")
RUNTIME_FILES = {"onnx": ONNX_FILE, "onnx-int8": INT8_FILE}
FRONTIER_DIR = "frontier"
SENTENCES = 64  # the fixed real test sentences every model is timed on
SINGLE_CALLS = 20  # batch-1 calls per model and round
ROUNDS = 3  # interleaved rounds: each model's calls are spread over the measurement
VAL_ACC, TEST_ACC = metric_key(Split.VALIDATION, "accuracy"), metric_key(Split.TEST, "accuracy")
TEST_MACRO_F1 = metric_key(Split.TEST, "macro_f1")


@dataclass
class Timing:
    p50_ms: float
    p95_ms: float
    rows_per_s: float  # batch 32


def _sentences(result: ExperimentResult, n: int = SENTENCES, seed: int = 0) -> list[str]:
    """``n`` test sentences of the study's data, in a seeded order (the same for every model)."""
    config = load_config(Path(result.student_dir) / "experiment.yaml")
    raw = load_source(config.data)
    split = raw.splits.get("test") or raw.splits["validation"]
    texts = split.frame["text_a"].tolist()
    random.Random(seed).shuffle(texts)
    return texts[:n]


class _TeacherModel(torch.nn.Module):
    """One co-finetuned teacher with its head, as a classifier of its own tokenization (to time it like a student)."""

    def __init__(self, ensemble: TeacherEnsemble, index: int) -> None:
        super().__init__()
        self.ensemble, self.index = ensemble, index

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return self.ensemble.teacher_logits(self.index, batch)


def teacher_sessions(module: torch.nn.Module, tokenizer, folder: Path, runtimes: Sequence[str], threads: int) -> dict[str, Any]:
    """The teacher on the ONNX runtimes the study times its students on (exported as the students are: the same
    exporter, opset and dynamic quantisation), as calls of an encoding; a runtime it cannot be exported to is left out
    with a note (its speed-up then reads n/a)."""
    wanted = [r for r in runtimes if r in RUNTIME_FILES]
    if not wanted:
        return {}
    import onnxruntime  # deferred: the optional [onnx] extra
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])
    sample = tokenizer(["a fine film", "a longer sentence to give the batch two lengths"], padding=True, return_tensors="pt")
    try:
        with torch.no_grad():
            torch.onnx.export(module, tuple(sample[n] for n in names), str(folder / ONNX_FILE), input_names=names,
                              output_names=["logits"], dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
                              opset_version=17, dynamo=False)
        if "onnx-int8" in wanted:
            quantize_dynamic(str(folder / ONNX_FILE), str(folder / INT8_FILE), weight_type=QuantType.QInt8)
    except Exception as exc:  # noqa: BLE001 - a teacher the exporter cannot trace is timed on PyTorch only
        print(f"[mtbert] frontier: teacher {folder.name} not exported to ONNX ({str(exc).splitlines()[0]}): timed on PyTorch only",
              flush=True)
        return {}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    out = {}
    for runtime in wanted:
        session = onnxruntime.InferenceSession(str(folder / RUNTIME_FILES[runtime]), options, providers=["CPUExecutionProvider"])
        out[runtime] = lambda enc, s=session: s.run(["logits"], {n: enc[n].astype(np.int64) for n in names if n in enc})
    return out


def time_models(models: dict[str, tuple[Any, Any]], texts: Sequence[str], threads: int = 1, rounds: int = ROUNDS,
                single_calls: int = SINGLE_CALLS, seed: int = 0) -> dict[str, Timing]:
    """Batch-1 latency and batch-32 throughput of each model (``name → (tokenizer, call(encoding))``), measured side by
    side: ``rounds`` rounds, each visiting every model in a new seeded order for ``single_calls`` batch-1 calls (one per
    sentence, cycling) and one batch-32 call; torch and onnxruntime on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    encoded = {}
    for name, (tokenizer, _) in models.items():
        one = [tokenizer([t], truncation=True, max_length=128, return_tensors="np") for t in texts]
        many = tokenizer(list(texts[:32]), truncation=True, max_length=128, padding=True, return_tensors="np")
        encoded[name] = (one, many)
    singles: dict[str, list[float]] = {name: [] for name in models}
    batches: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    rng = random.Random(seed)
    try:
        for name in order:  # warm-up: first calls allocate
            models[name][1](encoded[name][0][0])
            models[name][1](encoded[name][1])
        for round_ in range(rounds):
            rng.shuffle(order)
            for name in order:
                call, (one, many) = models[name][1], encoded[name]
                for i in range(single_calls):
                    started = time.perf_counter()
                    call(one[(round_ * single_calls + i) % len(one)])
                    singles[name].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                call(many)
                batches[name].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return {name: Timing(statistics.median(singles[name]), float(np.percentile(singles[name], 95)),
                         32 / statistics.median(batches[name])) for name in models}


def _student_call(model) -> Any:
    if hasattr(model, "session"):  # OnnxStudent
        return lambda enc: model.logits(dict(enc))

    def call(enc):
        feed = {k: torch.from_numpy(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            return model.model(**feed)

    return call


def _teacher_call(module: torch.nn.Module):
    def call(enc):
        feed = {k: torch.from_numpy(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            return module(**feed)

    return call


def _size_mb(student: Path, runtime: str) -> float:
    files = [student / RUNTIME_FILES[runtime]] if runtime in RUNTIME_FILES else list(student.glob("model*.safetensors"))
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def build_frontier(sweep: str | Path, runtimes: Sequence[str] = RUNTIMES, threads: int = 1,
                   rounds: int = ROUNDS, out: str | Path | None = None) -> pd.DataFrame:
    """Every finished trial's student on each runtime the deploy gate keeps, with its teachers, timed side by side;
    written as ``<sweep>/analysis/frontier/frontier.csv`` (+ ``frontier.md``, ``frontier.png``). Returns the table."""
    study = load_study(sweep)
    done = study.finished
    if done.empty:
        raise ResultsError(f"{study.path}: no finished trial to place on a frontier")
    out_dir = Path(out) if out is not None else study.path / "analysis" / FRONTIER_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {row.trial_id: ExperimentResult.read(Path(row.student_dir).parent / "result.json") for row in done.itertuples()}
    texts = _sentences(next(iter(results.values())))
    models: dict[str, tuple[Any, Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    teacher_layers: dict[str, int] = {}  # each best teacher's encoder depth (the students' depth is read beside it)
    for trial_id, result in results.items():
        student = Path(result.student_dir)
        if any(r != "torch" for r in runtimes) and not (student / REPORT_FILE).is_file():
            print(f"[mtbert] frontier: exporting {student} to ONNX and int8 (gated on validation)", flush=True)
            export_onnx(student, int8="onnx-int8" in runtimes, speed=False)
        gates = (json.loads((student / REPORT_FILE).read_text()).get("gate") or {}) if (student / REPORT_FILE).is_file() else {}
        for runtime in runtimes:
            if runtime in RUNTIME_FILES and not (student / RUNTIME_FILES[runtime]).is_file():
                meta[f"{trial_id}/{runtime}"] = {"trial_id": trial_id, "runtime": runtime, "kept": False,
                                                 "why": (gates.get(runtime) or {}).get("reason", "not exported")}
                continue
            model = load_runtime(runtime, student, threads=threads)
            models[f"{trial_id}/{runtime}"] = (model.tokenizer, _student_call(model))
            meta[f"{trial_id}/{runtime}"] = {"trial_id": trial_id, "runtime": runtime, "kept": True,
                                             "why": (gates.get(runtime) or {}).get("reason", "")}
        best = best_teacher(result)
        if best is not None and f"teacher:{best}/torch" not in models:
            ensemble = TeacherEnsemble.from_pretrained(result.cofinetune.checkpoint).eval()
            module = _TeacherModel(ensemble, list(result.teachers).index(best)).eval()
            teacher_layers[best] = int(getattr(ensemble.encoders[module.index].config, "num_hidden_layers", 0))
            tokenizer = load_tokenizer(best)
            models[f"teacher:{best}/torch"] = (tokenizer, _teacher_call(module))
            for runtime, session in teacher_sessions(module, tokenizer, out_dir / "teachers" / _short(best), runtimes,
                                                     threads).items():
                models[f"teacher:{best}/{runtime}"] = (tokenizer, session)
    print(f"[mtbert] frontier: timing {len(models)} models side by side on {len(texts)} test sentences, {threads} thread(s), "
          f"{rounds} interleaved rounds", flush=True)
    timings = time_models(models, texts, threads=threads, rounds=rounds)
    rows = []
    for key, info in meta.items():
        result = results[info["trial_id"]]
        trial = done[done["trial_id"] == info["trial_id"]].iloc[0]
        best = best_teacher(result)
        timing = timings.get(key)
        teacher = timings.get(f"teacher:{best}/{info['runtime']}") if best else None  # the teacher on the same runtime
        row = {
            "trial_id": info["trial_id"], "runtime": info["runtime"], "kept": info["kept"], "gate": info["why"],
            "layers": _layers(result), "teachers": "+".join(_short(t) for t in result.teachers),
            **{k.removeprefix("param:"): v for k, v in trial.items() if str(k).startswith("param:")},
            VAL_ACC: result.student.metric("accuracy", Split.VALIDATION),
            TEST_ACC: result.student.metric("accuracy", Split.TEST),
            TEST_MACRO_F1: result.student.metric("macro_f1", Split.TEST),
            "p50_ms": timing.p50_ms if timing else math.nan, "p95_ms": timing.p95_ms if timing else math.nan,
            "batch32_rows_per_s": timing.rows_per_s if timing else math.nan,
            "size_mb": _size_mb(Path(result.student_dir), info["runtime"]),
            "best_teacher": best,
            "best_teacher_layers": teacher_layers.get(best, math.nan) if best else math.nan,
            "best_teacher_val_accuracy": result.teachers[best].metric("accuracy", Split.VALIDATION) if best else math.nan,
            "best_teacher_test_accuracy": result.teachers[best].metric("accuracy", Split.TEST) if best else math.nan,
            "retention": (_ratio(result.student.metric("accuracy", Split.TEST), result.teachers[best].metric("accuracy", Split.TEST))
                          if best else math.nan),
            "val_retention": _ratio(result.student.metric("accuracy"), result.teachers[best].metric("accuracy")) if best else math.nan,
            "teacher_p50_ms": teacher.p50_ms if teacher else math.nan,
            "speedup": (teacher.p50_ms / timing.p50_ms) if (teacher and timing) else math.nan,
            "student_dir": result.student_dir,
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    table["pareto"] = pareto(table)
    teachers = pd.DataFrame([{"teacher": name.removeprefix("teacher:").rsplit("/", 1)[0], "runtime": name.rsplit("/", 1)[1],
                              "p50_ms": t.p50_ms, "p95_ms": t.p95_ms, "batch32_rows_per_s": t.rows_per_s}
                             for name, t in timings.items() if name.startswith("teacher:")])
    table.to_csv(out_dir / "frontier.csv", index=False)
    teachers.to_csv(out_dir / "teachers.csv", index=False)
    (out_dir / "frontier.md").write_text(frontier_markdown(table, teachers, threads))
    _plot(table, teachers, results, out_dir / "frontier.png")
    return table


def best_teacher(result: ExperimentResult) -> str | None:
    """The run's co-finetuned teacher with the best validation accuracy (whose test accuracy retention divides by)."""
    scored = {name: s.metric("accuracy") for name, s in result.teachers.items() if s.metric("accuracy") is not None}
    return max(scored, key=scored.get) if scored else None


def _layers(result: ExperimentResult) -> int:
    return int(read_student_meta(Path(result.student_dir)).get("num_layers", 0))


def _short(name: str) -> str:
    return Path(name).name


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b else math.nan


def pareto(table: pd.DataFrame, accuracy: str = VAL_ACC, latency: str = "p50_ms") -> pd.Series:
    """Whether each kept row is on the front: no other kept row is at least as accurate and at least as fast, and
    better on one of the two."""
    kept = table[table["kept"] & table[latency].notna()]
    on = pd.Series(False, index=table.index)
    for i, row in kept.iterrows():
        dominated = ((kept[accuracy] >= row[accuracy]) & (kept[latency] <= row[latency])
                     & ((kept[accuracy] > row[accuracy]) | (kept[latency] < row[latency]))).any()
        on[i] = not dominated
    return on


def frontier_markdown(table: pd.DataFrame, teachers: pd.DataFrame, threads: int) -> str:
    """The frontier table: one row per (student, runtime), the front marked, and the teachers' timings."""
    lines = [f"# Accuracy–latency frontier\n\nEvery (student, runtime) timed side by side in one process, {threads} "
             "thread(s), batch 1 (p50 / p95 ms) and batch 32 (rows/s) on the same test sentences, repeats interleaved. "
             "Selection on validation; test reported. retention = student test ÷ best teacher test (the teacher best on "
             "validation); speed-up = that teacher's p50 ÷ the student's, on the same runtime. ★ = on the Pareto front "
             "(validation accuracy vs p50).\n",
             "| | trial | layers | teachers | runtime | val acc. | test acc. | test macro-F1 | p50 ms | p95 ms | rows/s @32 "
             "| size MB | retention | speed-up | gate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ordered = table.sort_values(["p50_ms", VAL_ACC], na_position="last")
    for _, r in ordered.iterrows():
        lines.append(f"| {'★' if r['pareto'] else ''} | {r['trial_id']} | {r['layers']} | {r['teachers']} | {r['runtime']} | "
                     f"{100 * r[VAL_ACC]:.2f} | {100 * r[TEST_ACC]:.2f} | {100 * r[TEST_MACRO_F1]:.2f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['batch32_rows_per_s']:,.0f} | {r['size_mb']:.1f} | "
                     f"{100 * r['retention']:.1f} % | {r['speedup']:.1f}× | {'kept' if r['kept'] else 'not kept: ' + str(r['gate'])} |")
    if not teachers.empty:
        lines += ["", "| best teacher | runtime | p50 ms | p95 ms | rows/s @32 |", "|---|---|---|---|---|"]
        lines += [f"| {t['teacher']} | {t['runtime']} | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} | {t['batch32_rows_per_s']:,.0f} |"
                  for _, t in teachers.iterrows()]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, teachers: pd.DataFrame, results: dict[str, ExperimentResult], path: Path) -> None:
    import matplotlib  # deferred: only plotting needs it (and its backend is chosen here, before pyplot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    kept = table[table["kept"]]
    for runtime, marker in zip(RUNTIMES, ("o", "s", "^")):
        part = kept[kept["runtime"] == runtime]
        ax.scatter(part["p50_ms"], 100 * part[VAL_ACC], marker=marker, label=f"student, {runtime}", alpha=0.8)
        for _, r in part.iterrows():
            ax.annotate(f"{r['layers']}L", (r["p50_ms"], 100 * r[VAL_ACC]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
    front = kept[kept["pareto"]].sort_values("p50_ms")
    ax.step(front["p50_ms"], 100 * front[VAL_ACC], where="post", color="black", linewidth=1, label="Pareto front")
    accuracy = {}
    for result in results.values():
        for name, scores in result.teachers.items():
            accuracy.setdefault(name, scores.metric("accuracy"))
    for i, (_, t) in enumerate(teachers.iterrows()):
        point = (t["p50_ms"], 100 * (accuracy.get(t["teacher"]) or math.nan))
        ax.scatter([point[0]], [point[1]], marker="*", s=160, color="red",
                   label="best teacher, on each runtime" if i == 0 else None)
        ax.annotate(f"{_short(t['teacher'])}\n{t['runtime']}", point, fontsize=6, color="red", ha="center",
                    xytext=(0, -10 - 14 * (i % 2)), textcoords="offset points", va="top")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Students on each runtime, and their best teachers (★)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def pick(table: pd.DataFrame, latency_budget_ms: float | None = None, min_retention: float | None = None) -> pd.Series:
    """The kept row with the best *validation* accuracy within the budget (batch-1 p50) and with a validation retention
    of at least ``min_retention``; ``ResultsError`` (one line: the fastest row) when none is inside."""
    inside = table[table["kept"] & table["p50_ms"].notna()]
    if latency_budget_ms is not None:
        inside = inside[inside["p50_ms"] <= latency_budget_ms]
    if min_retention is not None:
        inside = inside[inside["val_retention"] >= min_retention]
    if inside.empty:
        fastest = table[table["kept"]].sort_values("p50_ms").iloc[0]
        raise ResultsError(f"--latency-budget-ms {latency_budget_ms} / --min-retention {min_retention}: no student is inside; "
                           f"the fastest is trial {fastest['trial_id']} on {fastest['runtime']} at {fastest['p50_ms']:.2f} ms "
                           f"(validation retention {100 * fastest['val_retention']:.1f} %)")
    return inside.sort_values([VAL_ACC, "p50_ms"], ascending=[False, True]).iloc[0]


def export_choice(choice: pd.Series, table: pd.DataFrame, out: Path, latency_budget_ms: float | None,
                  min_retention: float | None) -> tuple[Path, str]:
    """Copy the chosen student (its transformers folder, ONNX files and card) to ``out`` and say why it won."""
    inside = table[table["kept"] & (table["p50_ms"] <= (latency_budget_ms or math.inf))]
    why = (f"trial {choice['trial_id']} ({choice['layers']} layers, teachers {choice['teachers']}) on {choice['runtime']}: "
           f"validation accuracy {100 * choice[VAL_ACC]:.2f} %, the best of {len(inside)} (student, runtime) rows "
           + (f"within {latency_budget_ms:g} ms" if latency_budget_ms is not None else "")
           + (f" and at least {100 * min_retention:.0f} % validation retention" if min_retention is not None else "")
           + f"; p50 {choice['p50_ms']:.2f} ms, {choice['batch32_rows_per_s']:,.0f} rows/s at batch 32; test accuracy "
           f"{100 * choice[TEST_ACC]:.2f} %, retention {100 * choice['retention']:.1f} % of {choice['best_teacher']} "
           f"at {choice['speedup']:.1f}× its speed")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(choice["student_dir"], out)
    (out / "CHOSEN.md").write_text(f"# Chosen student\n\n{why}\n\nRuntime to serve: `{choice['runtime']}` "
                                   f"(`mtbert-ray serve {out} --runtime {choice['runtime']}`).\n")
    return out, why
