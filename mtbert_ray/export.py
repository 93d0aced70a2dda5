"""The exported student: a transformers model folder (``AutoModelForSequenceClassification``, ``pipeline``).

Layout of an export (format 2; ``StudentClassifier.save_pretrained`` / ``from_pretrained``)::

    config.json           model_type "mtbert-student": the encoder's config, id2label / label2id, query dim,
                          max_seq_length, pair, teachers, init_from; ``auto_map`` names the bundled code
    model.safetensors     encoder.* + head.* (attentive pooling + dense layer)
    hf_student.py         the model's code (torch + transformers only), for ``trust_remote_code=True`` without mtbert-ray
    tokenizer files       the student's tokenizer (``model_max_length`` = the run's max_length)
    mtbert_student.json   label names, query dim, max length, pairs (read by mtbert-ray's own tools)
    README.md             the model card (``model_card.write_model_card``)
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

import torch
from safetensors.torch import load_model, save_model

from mtbert_ray.metric_names import Split, metric_key
from mtbert_ray.models.hf_student import MODEL_TYPE, MTBertStudentConfig, MTBertStudentForSequenceClassification
from mtbert_ray.models.hub import load_encoder, load_tokenizer
from mtbert_ray.models.student import StudentModel

HEAD_FILE = "head.safetensors"
META_FILE = "mtbert_student.json"
STUDENT_DIR = "student"  # a run folder's export (train.distill.STUDENT_DIR)
TEST_ACCURACY = metric_key(Split.TEST, "accuracy")  # the ONNX report: test accuracy per runtime


def save_student(student: StudentModel, folder: Path, label_names: Sequence[str], **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    student.encoder.save_pretrained(folder)
    save_model(student.head, str(folder / HEAD_FILE))
    meta = {
        "format": 1,
        "num_labels": student.num_labels,
        "label_names": list(label_names),
        "query_dim": student.head.pooling.query_dim,
        "num_layers": student.num_layers,
        **extra,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def _damaged(path: Path, what: str):
    from mtbert_ray.errors import MTBertError

    return MTBertError(f"{path}: {what}; export the student again (or copy the whole folder)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_student_meta(folder: Path) -> dict:
    """``mtbert_student.json``, checked: num_labels ≥ 2, as many label names, a query dim."""
    from mtbert_ray.errors import MTBertError

    path = folder / META_FILE
    if not path.is_file():
        raise MTBertError(f"{folder}: not an exported mtbert-ray student (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"not readable JSON ({_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "expected a JSON object")
    num_labels, names, query = meta.get("num_labels"), meta.get("label_names"), meta.get("query_dim")
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
        raise _damaged(path, f"num_labels: expected an integer >= 2, got {num_labels!r}")
    if not isinstance(names, list) or len(names) != num_labels or not all(isinstance(n, str) for n in names):
        raise _damaged(path, f"label_names: expected {num_labels} names (num_labels), got {names!r}")
    if not isinstance(query, int) or isinstance(query, bool) or query < 1:
        raise _damaged(path, f"query_dim: expected a positive integer, got {query!r}")
    return meta


def check_student_weights(folder: Path) -> None:
    """The weights hold every tensor the config asks for (a config claiming more layers than the weights would
    otherwise load with random layers), the head included, and every weights file is readable."""
    from safetensors import safe_open

    from mtbert_ray.models.hub import load_config, model_depth

    weights = folder / "model.safetensors"
    native = is_transformers_student(folder)
    files = [weights] if native else [weights, folder / HEAD_FILE]
    keys: set[str] = set()
    for path in files:
        if not path.is_file():
            raise _damaged(path, "missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys |= set(handle.keys()) if path == weights else set()
        except Exception as exc:  # noqa: BLE001 - a truncated safetensors file raises SafetensorError
            raise _damaged(path, f"unreadable weights ({_first_line(exc)})") from None
    if native:
        try:
            depth = int(json.loads((folder / "config.json").read_text())["encoder"]["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _damaged(folder / "config.json", f"no encoder.num_hidden_layers ({_first_line(exc)})") from None
        head = {"head.dense.weight", "head.pooling.proj.weight", "head.pooling.query.weight"}
        if not head <= keys:
            raise _damaged(weights, f"no head weights ({', '.join(sorted(head - keys))})")
    else:
        depth = model_depth(load_config(str(folder)), str(folder))
    layers = {int(part) for key in keys for _, part in _layer_indices(key)}
    missing = sorted(set(range(depth)) - layers)
    if layers and missing:
        raise _damaged(folder / "config.json", f"says {depth} layers but {weights.name} holds {len(layers)} "
                                                 f"(no weights for layer(s) {', '.join(map(str, missing))})")


def _layer_indices(key: str):
    """(prefix, index) of a numbered Transformer layer in a state-dict key (``encoder.layer.3.…`` → 3)."""
    parts = key.split(".")
    for i in range(len(parts) - 1):
        if parts[i] in ("layer", "layers") and parts[i + 1].isdigit():
            yield parts[i], parts[i + 1]
            return


def load_student_weights(student: StudentModel, folder: Path) -> None:
    """Load a saved student's encoder and head weights into an existing ``StudentModel``."""
    from safetensors.torch import load_file

    encoder_state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = student.encoder.load_state_dict(encoder_state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ValueError(f"{folder}: student weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    load_model(student.head, str(folder / HEAD_FILE))


@dataclass
class Prediction:
    label: str
    label_id: int
    probabilities: dict[str, float]


def encoded_batches(tokenizer, texts: Sequence[str] | str, text_pairs: Sequence[str] | None, batch_size: int, max_length: int,
                    tensors: str):
    """(index of the batch's first text, its encoding) for ``texts`` (and their pairs) in batches of ``batch_size``,
    truncated to ``max_length`` and padded to each batch's longest row; ``tensors``: ``"pt"`` or ``"np"``."""
    if isinstance(texts, str):
        texts = [texts]
    for start in range(0, len(texts), batch_size):
        pair = list(text_pairs[start:start + batch_size]) if text_pairs is not None else None
        yield start, tokenizer(list(texts[start:start + batch_size]), pair, truncation=True, max_length=max_length,
                               padding=True, return_tensors=tensors)


class StudentClassifier:
    """An exported MT-BERT student, ready to classify text (either export format)."""

    def __init__(self, model: torch.nn.Module, tokenizer, meta: dict) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.label_names: list[str] = list(meta["label_names"])

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "StudentClassifier":
        """Load an exported student, checked against its meta and weights (``read_student_meta``,
        ``check_student_weights``): a damaged folder is a one-line ``MTBertError``, never a model with random weights."""
        folder = Path(folder)
        meta = read_student_meta(folder)
        check_student_weights(folder)
        if is_transformers_student(folder):
            model = MTBertStudentForSequenceClassification.from_pretrained(str(folder))
        else:
            model = StudentModel(load_encoder(str(folder)), meta["num_labels"], meta["query_dim"])
            try:
                load_model(model.head, str(folder / HEAD_FILE))
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
                raise _damaged(folder / HEAD_FILE, f"cannot load the head ({_first_line(exc)})") from None
        return cls(model.to(device), load_tokenizer(str(folder)), meta)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the student as a format-2 folder (see the module's docstring)."""
        folder = Path(folder)
        model = self.model if isinstance(self.model, MTBertStudentForSequenceClassification) else to_transformers(
            self.model, self.label_names, max_length=int(self.meta.get("max_length", 512)), pair=bool(self.meta.get("pair")),
            teachers=self.meta.get("teachers") or [], init_from=self.meta.get("init_from"))
        save_transformers_student(model, self.tokenizer, folder, self.meta)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32) -> torch.Tensor:
        """Class probabilities [len(texts), C]."""
        out = []
        for start, enc in encoded_batches(self.tokenizer, texts, text_pairs, batch_size, int(self.meta.get("max_length", 512)), "pt"):
            feed = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            probs = torch.softmax(self.model(**feed).logits, dim=-1).cpu()
            if not torch.isfinite(probs).all():
                from mtbert_ray.errors import MTBertError

                raise MTBertError(f"the student's outputs for texts {start + 1}–{start + len(probs)} are not finite numbers; "
                                  "the student is damaged (a run whose loss was not finite?)")
            out.append(probs)
        return torch.cat(out) if out else torch.zeros(0, len(self.label_names))

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32) -> list[Prediction]:
        probs = self.predict_proba(texts, text_pairs, batch_size)
        result = []
        for row in probs:
            i = int(row.argmax())
            result.append(Prediction(self.label_names[i], i, {n: float(p) for n, p in zip(self.label_names, row)}))
        return result


# ---- a run's export and the parameter counts of Table 2 ------------------------------------------

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


def is_transformers_student(folder: Path) -> bool:
    """Format 2: ``config.json`` says ``model_type: mtbert-student``."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def to_transformers(student: StudentModel, label_names: Sequence[str], *, max_length: int, pair: bool,
                    teachers: Sequence[str], init_from: str | None) -> MTBertStudentForSequenceClassification:
    """A trained ``StudentModel`` as ``MTBertStudentForSequenceClassification`` with the same weights (same names)."""
    encoder = student.encoder.config.to_dict()
    for key in ("architectures", "_name_or_path", "transformers_version", "auto_map"):
        encoder.pop(key, None)
    names = [str(n) for n in label_names]
    config = MTBertStudentConfig(
        encoder=encoder, query_dim=student.head.pooling.query_dim, max_seq_length=max_length, pair=pair,
        teachers=list(teachers), init_from=init_from, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    model = MTBertStudentForSequenceClassification(config)
    state = {k: v for k, v in student.state_dict().items() if not k.startswith("head.adapters.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise ValueError(f"student → transformers: weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def save_transformers_student(model: MTBertStudentForSequenceClassification, tokenizer, folder: Path, meta: dict) -> None:
    """config.json (with ``auto_map``), model.safetensors, the bundled ``hf_student.py``, the tokenizer and
    ``mtbert_student.json`` (format 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    MTBertStudentConfig.register_for_auto_class()
    MTBertStudentForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    model.save_pretrained(folder)
    tokenizer.model_max_length = model.config.max_seq_length
    tokenizer.save_pretrained(folder)
    config = model.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    keep = {k: v for k, v in meta.items() if k not in ("format", "num_labels", "label_names", "query_dim", "num_layers")}
    out = {**keep, "format": 2, "num_labels": config.num_labels, "label_names": names, "query_dim": config.query_dim,
           "num_layers": int(config.encoder.get("num_hidden_layers", 0)), "max_length": config.max_seq_length,
           "pair": config.pair, "teachers": config.teachers, "init_from": config.init_from}
    (folder / META_FILE).write_text(json.dumps(out, indent=2))


def convert_student(folder: Path, out: Path | None = None) -> Path:
    """A format-1 export rewritten as format 2: in place (the old files kept in ``<folder>.format1``) or into ``out``."""
    from mtbert_ray.errors import MTBertError

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
    from safetensors import safe_open

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
    from mtbert_ray.models.teachers import HEADS_FILE

    teacher_params = {
        name: sum(safetensors_params(p) for p in (teachers_dir / f"teacher_{i}").glob("*.safetensors"))
        for i, name in enumerate(names)
    }
    student = sum(safetensors_params(p) for p in student_dir.glob("model*.safetensors"))
    if (student_dir / HEAD_FILE).is_file():  # format 1 keeps the head apart
        student += safetensors_params(student_dir / HEAD_FILE)
    return {"teachers": teacher_params, "shared_head": safetensors_params(teachers_dir / HEADS_FILE), "student": student}


# ---- python -m mtbert_ray.export ----------------------------------------------------------------------------------

def _student_folder(path: Path) -> tuple[Path, Path | None]:
    """(student folder, run folder or None) of a run folder or a student folder."""
    from mtbert_ray.errors import MTBertError

    if (path / STUDENT_DIR / META_FILE).is_file():
        return path / STUDENT_DIR, path
    if (path / META_FILE).is_file():
        return path, path.parent if (path.parent / "result.json").is_file() and path.name == STUDENT_DIR else None
    raise MTBertError(f"{path}: neither a run folder (with {STUDENT_DIR}/) nor an exported student (no {META_FILE})")


def _test_rows(student: Path) -> tuple[list[str], list[str] | None, list[int], str]:
    """The run's test texts, pairs and labels from the student's ``experiment.yaml`` (empty when unreadable), and a note."""
    from mtbert_ray.config import load_config
    from mtbert_ray.data.sources import load_source
    from mtbert_ray.errors import MTBertError

    try:
        raw = load_source(load_config(student / "experiment.yaml").data)
    except (MTBertError, OSError) as exc:
        return [], None, [], f"test split not readable ({exc}); parity on fixed sentences, no re-scoring"
    split = raw.splits.get("test")
    if split is None or not split.labelled:
        return [], None, [], "no labelled test split: parity on fixed sentences, no re-scoring"
    frame = split.frame
    pairs = frame["text_b"].tolist() if "text_b" in frame else None
    return frame["text_a"].tolist(), pairs, frame["label"].astype(int).tolist(), f"test split: {len(frame)} rows"


def export_onnx_command(path: Path, int8: bool, speed: bool = True, reps: int = 30) -> dict:
    """The ``onnx`` subcommand: files, parity, re-scoring, speed; the report (also in result.json and the card)."""
    from mtbert_ray.errors import MTBertError
    from mtbert_ray.model_card import write_model_card
    from mtbert_ray.onnx_export import (
        PARITY_ATOL,
        REPORT_FILE,
        SAMPLE_TEXTS,
        OnnxStudent,
        accuracy,
        export_onnx_files,
        measure_speed,
        parity,
    )

    student, run = _student_folder(path)
    classifier = StudentClassifier.from_pretrained(student)
    files = export_onnx_files(classifier, student, int8)
    texts, pairs, labels, note = _test_rows(student)
    sessions = {"onnxruntime fp32": OnnxStudent(student, threads=1)}
    if int8:
        sessions["onnxruntime int8"] = OnnxStudent(student, int8=True, threads=1)
    sample = texts or list(SAMPLE_TEXTS)
    check = parity(classifier, sessions["onnxruntime fp32"], sample, pairs)
    if check["max_abs_logit_diff"] > PARITY_ATOL:
        raise MTBertError(f"{files[0]}: ONNX logits differ from PyTorch by {check['max_abs_logit_diff']:.2e} (> {PARITY_ATOL:g})")
    report: dict[str, Any] = {"files": [str(f) for f in files], "parity": check, "data": note}
    if labels:
        report[TEST_ACCURACY] = {"torch fp32": accuracy(classifier.predict_proba, texts, pairs, labels)}
        for name, session in sessions.items():
            report[TEST_ACCURACY][name] = accuracy(session.predict_proba, texts, pairs, labels)
        if int8:
            report["int8_accuracy_change"] = report[TEST_ACCURACY]["onnxruntime int8"] - report[TEST_ACCURACY]["torch fp32"]
    if speed:
        teacher = _deepest(classifier.meta.get("teachers") or [])
        report["speed"] = measure_speed(classifier, sessions, sample, teacher, reps)
    (student / REPORT_FILE).write_text(json.dumps(report, indent=2))
    result = None
    if run is not None:
        result = json.loads((run / "result.json").read_text())
        result["export"] = report
        from mtbert_ray.storage import atomic_write_text

        atomic_write_text(run / "result.json", json.dumps(result, indent=2))
    write_model_card(student, read_student_meta(student), result, report.get("speed"))
    return report


def _deepest(teachers: Sequence[str]) -> str | None:
    from mtbert_ray.models.hub import load_config

    depths = {}
    for name in teachers:
        try:
            depths[name] = int(getattr(load_config(name), "num_hidden_layers", 0))
        except Exception:  # noqa: BLE001 - a teacher that no longer loads is left out of the speed table
            continue
    return max(depths, key=depths.get) if depths else None


def main(argv: list[str] | None = None) -> None:
    import argparse

    from mtbert_ray.errors import run_cli

    parser = argparse.ArgumentParser(prog="python -m mtbert_ray.export", description="Export an MT-BERT student.")
    sub = parser.add_subparsers(dest="command", required=True)
    onnx = sub.add_parser("onnx", help="model.onnx (and model.int8.onnx), parity, re-scoring and speed")
    onnx.add_argument("path", help="a run folder or an exported student folder")
    onnx.add_argument("--int8", action="store_true", help="also write the dynamically quantised int8 model")
    onnx.add_argument("--no-speed", action="store_true", help="skip the latency / throughput measurement")
    convert = sub.add_parser("convert", help="rewrite a format-1 export as a transformers student (format 2)")
    convert.add_argument("path")
    convert.add_argument("--out", default=None, help="write here instead of in place (in place keeps <path>.format1)")
    for p in (onnx, convert):
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "convert":
            print(f"[mtbert] converted: {convert_student(Path(args.path), Path(args.out) if args.out else None)}")
            return 0
        report = export_onnx_command(Path(args.path), args.int8, speed=not args.no_speed)
        print(json.dumps(report, indent=2))
        return 0

    run_cli(body, args.debug)


if __name__ == "__main__":
    main()
