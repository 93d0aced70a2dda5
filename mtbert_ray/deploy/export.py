"""The exported student: a transformers model folder (``AutoModelForSequenceClassification``, ``pipeline``).

Layout of an export (format 2; ``StudentClassifier.save_pretrained`` / ``from_pretrained``)::

    config.json           model_type "mtbert-student": the encoder's config, id2label / label2id, query dim,
                          max_seq_length, pair, teachers, init_from; ``auto_map`` names the bundled code
    model.safetensors     encoder.* + head.* (attentive pooling + dense layer)
    hf_student.py         the model's code (torch + transformers only), for ``trust_remote_code=True`` without mtbert-ray
    tokenizer files       the student's tokenizer (``model_max_length`` = the run's max_length)
    mtbert_student.json   label names, query dim, max length, pairs (read by mtbert-ray's own tools)
    README.md             the model card (``deploy.card.write_model_card``)
    experiment.yaml       the resolved experiment config that produced it (when exported by a run)

Format 1 (before): a plain encoder folder + ``head.safetensors`` + ``mtbert_student.json``. Plain transformers loads
such a folder as a BERT classifier with a *random* head; ``StudentClassifier`` still reads it correctly, and
``python -m mtbert_ray.export convert FOLDER`` rewrites it as format 2. Training checkpoints keep format 1.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_model

from mtbert_ray.common.errors import MTBertError
from mtbert_ray.common.metric_names import Split, metric_key
from mtbert_ray.config import load_config as load_experiment_config
from mtbert_ray.data.sources import load_source
from mtbert_ray.deploy.card import write_model_card
from mtbert_ray.deploy.classifier import StudentClassifier
from mtbert_ray.deploy.gate import CLASS_TOLERANCE_POINTS, TOLERANCE_POINTS, GateResult, gate
from mtbert_ray.deploy.onnx import (
    INT8_FILE,
    ONNX_FILE,
    PARITY_ATOL,
    REPORT_FILE,
    SAMPLE_TEXTS,
    OnnxStudent,
    accuracy,
    export_onnx_files,
    measure_speed,
    parity,
)
from mtbert_ray.models.hub import load_config, load_encoder, load_tokenizer
from mtbert_ray.models.student import StudentModel
from mtbert_ray.models.student_io import (
    HEAD_FILE,
    META_FILE,
    is_transformers_student,
    read_student_meta,
    save_transformers_student,
    to_transformers,
)
from mtbert_ray.models.teachers import HEADS_FILE
from mtbert_ray.store.files import atomic_write_text
from mtbert_ray.store.lock import FolderLock

STUDENT_DIR = "student"  # a run folder's export (core.steps.distill.STUDENT_DIR)
TEST_ACCURACY = metric_key(Split.TEST, "accuracy")  # the ONNX report: test accuracy per runtime


def export_student(checkpoint_student: Path, out: Path, *, init_from: str, max_length: int, pair: bool,
                   teachers: Sequence[str], experiment_yaml: str, trust_remote_code: bool = False) -> Path:
    """The best checkpoint's student (format 1) as a self-contained format-2 folder: the transformers model, the
    tokenizer, the label map and the experiment config. Written beside ``out`` and renamed into place."""
    meta = read_student_meta(checkpoint_student)
    student = StudentModel(load_encoder(str(checkpoint_student)), meta["num_labels"], meta["query_dim"])
    load_model(student.head, str(checkpoint_student / HEAD_FILE))
    model = to_transformers(student, meta["label_names"], max_length=max_length, pair=pair, teachers=list(teachers),
                            init_from=init_from)
    tokenizer = load_tokenizer(init_from, trust_remote_code=trust_remote_code)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    save_transformers_student(model, tokenizer, tmp, {**meta, "init_from": init_from, "teachers": list(teachers)})
    (tmp / "experiment.yaml").write_text(experiment_yaml)
    if out.exists():
        shutil.rmtree(out)  # the run folder's own earlier export (a run folder is only ever one mtbert-ray made)
    os.rename(tmp, out)
    return out


def convert_student(folder: Path, out: Path | None = None) -> Path:
    """A format-1 export rewritten as format 2: in place (the old files kept in ``<folder>.format1``) or into ``out``."""
    folder = Path(folder)
    if is_transformers_student(folder):
        raise MTBertError(f"{folder}: already a transformers student (format 2); nothing to convert")
    classifier = StudentClassifier.from_pretrained(folder)
    target = Path(out) if out is not None else folder
    if out is not None and target.exists() and any(target.iterdir()):
        raise MTBertError(f"--out: {target} is not empty; choose a new folder")
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    classifier.save_pretrained(tmp)
    for extra in ("experiment.yaml", "README.md"):
        if (folder / extra).is_file():
            shutil.copy2(folder / extra, tmp / extra)
    if out is None:
        backup = folder.parent / f"{folder.name}.format1"
        if backup.exists():
            raise MTBertError(f"{backup} exists; move it away or convert with --out")
        os.rename(folder, backup)
    elif target.exists():
        target.rmdir()
    os.rename(tmp, target)
    return target


def safetensors_params(path: Path) -> int:
    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            n = 1
            for d in handle.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def parameter_counts(teachers_dir: Path, student_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    """Parameters of each teacher encoder (+ the shared head once) and of the exported student (as in Table 2)."""
    teacher_params = {
        name: sum(safetensors_params(p) for p in (teachers_dir / f"teacher_{i}").glob("*.safetensors"))
        for i, name in enumerate(names)
    }
    student = sum(safetensors_params(p) for p in student_dir.glob("model*.safetensors"))
    if (student_dir / HEAD_FILE).is_file():  # format 1 keeps the head apart
        student += safetensors_params(student_dir / HEAD_FILE)
    return {"teachers": teacher_params, "shared_head": safetensors_params(teachers_dir / HEADS_FILE), "student": student}


# ---- the onnx command -----------------------------------------------------------------------------------------

def _student_folder(path: Path) -> tuple[Path, Path | None]:
    """(student folder, run folder or None) of a run folder or a student folder."""
    if (path / STUDENT_DIR / META_FILE).is_file():
        return path / STUDENT_DIR, path
    if (path / META_FILE).is_file():
        return path, path.parent if (path.parent / "result.json").is_file() and path.name == STUDENT_DIR else None
    raise MTBertError(f"{path}: neither a run folder (with {STUDENT_DIR}/) nor an exported student (no {META_FILE})")


@dataclass
class Rows:
    """A labelled split of the run's data: texts, pairs (or None), labels; empty when it cannot be read, with why."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    note: str


def _split_rows(student: Path, split_name: str) -> Rows:
    """The run's ``split_name`` rows from the student's ``experiment.yaml`` (empty when unreadable), and a note."""
    try:
        raw = load_source(load_experiment_config(student / "experiment.yaml").data)
    except (MTBertError, OSError) as exc:
        return Rows([], None, [], f"{split_name} split not readable ({exc})")
    split = raw.splits.get(split_name)
    if split is None or not split.labelled:
        return Rows([], None, [], f"no labelled {split_name} split")
    frame = split.frame
    pairs = frame["text_b"].tolist() if "text_b" in frame else None
    return Rows(frame["text_a"].tolist(), pairs, frame["label"].astype(int).tolist(), f"{split_name} split: {len(frame)} rows")


def gate_runtimes(classifier: StudentClassifier, sessions: dict[str, OnnxStudent], rows: Rows, tolerance: float,
                  class_tolerance: float) -> dict[str, GateResult]:
    """Each ONNX session against PyTorch on the validation rows (``deploy.gate``)."""
    reference = np.asarray(classifier.predict_proba(rows.texts, rows.pairs, 32)).argmax(-1)
    return {RUNTIME_OF[name]: gate(RUNTIME_OF[name], reference, session.predict_proba(rows.texts, rows.pairs, 32).argmax(-1),
                                   rows.labels, classifier.label_names, tolerance, class_tolerance)
            for name, session in sessions.items()}


RUNTIME_OF = {"onnxruntime fp32": "onnx", "onnxruntime int8": "onnx-int8"}  # session label → deploy.runtimes name


def export_onnx(path: Path, int8: bool, speed: bool = True, reps: int = 30, tolerance: float = TOLERANCE_POINTS,
                class_tolerance: float = CLASS_TOLERANCE_POINTS) -> dict:
    """The ``onnx`` subcommand: files, parity, the deploy gate on validation, re-scoring, speed; the report (also in
    result.json and the card). One writer at a time: the run folder (or the student folder) is locked meanwhile."""
    student, run = _student_folder(path)
    with FolderLock(run or student, "run folder" if run else "student folder"):
        return _export_onnx(student, run, int8, speed, reps, tolerance, class_tolerance)


def _export_onnx(student: Path, run: Path | None, int8: bool, speed: bool, reps: int, tolerance: float,
                 class_tolerance: float) -> dict:
    classifier = StudentClassifier.from_pretrained(student)
    files = export_onnx_files(classifier, student, int8)
    test = _split_rows(student, "test")
    texts, pairs, labels = test.texts, test.pairs, test.labels
    note = test.note if labels else f"{test.note}: parity on fixed sentences, no re-scoring"
    sessions = {"onnxruntime fp32": OnnxStudent(student, threads=1)}
    if int8:
        sessions["onnxruntime int8"] = OnnxStudent(student, int8=True, threads=1)
    sample = texts or list(SAMPLE_TEXTS)
    check = parity(classifier, sessions["onnxruntime fp32"], sample, pairs)
    if check["max_abs_logit_diff"] > PARITY_ATOL:
        raise MTBertError(f"{files[0]}: ONNX logits differ from PyTorch by {check['max_abs_logit_diff']:.2e} (> {PARITY_ATOL:g})")
    report: dict[str, Any] = {"files": [str(f) for f in files], "parity": check, "data": note}
    validation = _split_rows(student, "validation")
    if validation.labels:  # the deploy gate: a runtime that classifies validation worse than PyTorch is not kept
        gates = gate_runtimes(classifier, sessions, validation, tolerance, class_tolerance)
        report["gate"] = {runtime: result.to_json() for runtime, result in gates.items()}
        for name in list(sessions):
            result = gates[RUNTIME_OF[name]]
            if not result.kept:
                path = student / (INT8_FILE if RUNTIME_OF[name] == "onnx-int8" else ONNX_FILE)
                sessions.pop(name)
                path.unlink(missing_ok=True)
                report["files"] = [f for f in report["files"] if f != str(path)]
                print(f"[mtbert] {RUNTIME_OF[name]} export not kept: {result.reason}; the PyTorch student stays", flush=True)
    else:
        report["gate"] = {RUNTIME_OF[name]: {"kept": True, "reason": f"not gated: {validation.note}"} for name in sessions}
    if labels:
        report[TEST_ACCURACY] = {"torch fp32": accuracy(classifier.predict_proba, texts, pairs, labels)}
        for name, session in sessions.items():
            report[TEST_ACCURACY][name] = accuracy(session.predict_proba, texts, pairs, labels)
        if "onnxruntime int8" in sessions:
            report["int8_accuracy_change"] = report[TEST_ACCURACY]["onnxruntime int8"] - report[TEST_ACCURACY]["torch fp32"]
    if speed:
        teacher = _deepest(classifier.meta.get("teachers") or [])
        report["speed"] = measure_speed(classifier, sessions, sample, teacher, reps)
    (student / REPORT_FILE).write_text(json.dumps(report, indent=2))
    result = None
    if run is not None:
        result = json.loads((run / "result.json").read_text())
        result["export"] = report

        atomic_write_text(run / "result.json", json.dumps(result, indent=2))
    write_model_card(student, read_student_meta(student), result, report.get("speed"), gates=report.get("gate"))
    return report


def record_served(path: Path, served: dict[str, dict[str, float]]) -> Path:
    """Add served speed figures (request form → rows_per_s, p50_ms, p99_ms; measured by ``benchmarks/serve.py``) to
    the student's export report and its run's ``result.json``, and write its card again with them. Returns the card."""
    student, run = _student_folder(Path(path))
    report_path = student / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["served"] = served
    atomic_write_text(report_path, json.dumps(report, indent=2))
    result: dict[str, Any] = {"served": served}
    if run is not None:
        result = json.loads((run / "result.json").read_text())
        result.setdefault("export", {})["served"] = served
        result["served"] = served
        atomic_write_text(run / "result.json", json.dumps(result, indent=2))
    return write_model_card(student, read_student_meta(student), result, report.get("speed"), gates=report.get("gate"))


def _deepest(teachers: Sequence[str]) -> str | None:
    depths = {}
    for name in teachers:
        try:
            depths[name] = int(getattr(load_config(name), "num_hidden_layers", 0))
        except Exception:  # noqa: BLE001 - a teacher that no longer loads is left out of the speed table
            continue
    return max(depths, key=depths.get) if depths else None
