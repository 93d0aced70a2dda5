"""The student's files: how a training checkpoint saves and loads it (format 1: the encoder folder + ``head.safetensors``
+ ``mtbert_student.json``), how an export is checked before it is trusted, and how a ``StudentModel`` becomes the
transformers model ``MTBertStudentForSequenceClassification`` (format 2, ``deploy.export``).

A damaged folder is a one-line ``MTBertError`` naming the file, never a model with random weights.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model

from mtbert_ray.common.errors import MTBertError
from mtbert_ray.models.hf_student import MODEL_TYPE, MTBertStudentConfig, MTBertStudentForSequenceClassification
from mtbert_ray.models.hub import load_config, model_depth
from mtbert_ray.models.student import StudentModel

HEAD_FILE = "head.safetensors"
META_FILE = "mtbert_student.json"


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


def damaged(path: Path, what: str):
    return MTBertError(f"{path}: {what}; export the student again (or copy the whole folder)")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_student_meta(folder: Path) -> dict:
    """``mtbert_student.json``, checked: num_labels ≥ 2, as many label names, a query dim."""
    path = folder / META_FILE
    if not path.is_file():
        raise MTBertError(f"{folder}: not an exported mtbert-ray student (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise damaged(path, f"not readable JSON ({first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise damaged(path, "expected a JSON object")
    num_labels, names, query = meta.get("num_labels"), meta.get("label_names"), meta.get("query_dim")
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
        raise damaged(path, f"num_labels: expected an integer >= 2, got {num_labels!r}")
    if not isinstance(names, list) or len(names) != num_labels or not all(isinstance(n, str) for n in names):
        raise damaged(path, f"label_names: expected {num_labels} names (num_labels), got {names!r}")
    if not isinstance(query, int) or isinstance(query, bool) or query < 1:
        raise damaged(path, f"query_dim: expected a positive integer, got {query!r}")
    return meta


def check_student_weights(folder: Path, meta: dict | None = None) -> None:
    """The weights hold every tensor the config asks for (a config claiming more layers than the weights would
    otherwise load with random layers), the head included, every weights file is readable, and the head has as many
    classes as the config (and ``meta``, ``mtbert_student.json``) says — a damaged folder is one line, never a
    transformers size-mismatch traceback."""
    weights = folder / "model.safetensors"
    native = is_transformers_student(folder)
    files = [weights] if native else [weights, folder / HEAD_FILE]
    keys: set[str] = set()
    classes: int | None = None  # rows of the head's dense layer: the classes the weights were trained for
    for path in files:
        if not path.is_file():
            raise damaged(path, "missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = set(handle.keys())
                keys |= names if path == weights else set()
                dense = "head.dense.weight" if path == weights else "dense.weight"
                if dense in names:
                    classes = int(handle.get_slice(dense).get_shape()[0])
        except Exception as exc:  # noqa: BLE001 - a truncated safetensors file raises SafetensorError
            raise damaged(path, f"unreadable weights ({first_line(exc)})") from None
    if native:
        try:
            config = json.loads((folder / "config.json").read_text())
            depth = int(config["encoder"]["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise damaged(folder / "config.json", f"no encoder.num_hidden_layers ({first_line(exc)})") from None
        head = {"head.dense.weight", "head.pooling.proj.weight", "head.pooling.query.weight"}
        if not head <= keys:
            raise damaged(weights, f"no head weights ({', '.join(sorted(head - keys))})")
        labels = len(config.get("id2label") or {}) or config.get("num_labels")
        if classes is not None and labels is not None and int(labels) != classes:
            raise damaged(folder / "config.json", f"says {labels} labels but {weights.name}'s head has {classes} classes "
                                                  "(head.dense.weight)")
    else:
        depth = model_depth(load_config(str(folder)), str(folder))
    if meta is not None and classes is not None and int(meta["num_labels"]) != classes:
        source = weights.name if native else HEAD_FILE
        raise damaged(folder / META_FILE, f"num_labels: says {meta['num_labels']} but {source}'s head has {classes} classes")
    layers = {int(part) for key in keys for _, part in _layer_indices(key)}
    missing = sorted(set(range(depth)) - layers)
    if layers and missing:
        raise damaged(folder / "config.json", f"says {depth} layers but {weights.name} holds {len(layers)} "
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
    encoder_state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = student.encoder.load_state_dict(encoder_state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ValueError(f"{folder}: student weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    load_model(student.head, str(folder / HEAD_FILE))


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
