"""The exported student: a folder that loads with plain ``transformers`` plus the MT-BERT head.

Layout (``StudentClassifier.save_pretrained`` / ``from_pretrained``)::

    config.json, model.safetensors   the K-layer encoder (``AutoModel.from_pretrained(folder)`` loads it)
    tokenizer files                   the student's tokenizer (``AutoTokenizer.from_pretrained(folder)``)
    head.safetensors                  attentive pooling + dense layer
    mtbert_student.json               label names, query dim, max length, sentence pairs or not
    experiment.yaml                   the resolved experiment config that produced it (when exported by a run)
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

from mtbert_ray.models.hub import load_encoder, load_tokenizer
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
    """The encoder's weights hold every tensor its ``config.json`` asks for (a config claiming more layers than the
    weights would otherwise load with random layers), and the head's file is readable."""
    from safetensors import safe_open

    from mtbert_ray.models.hub import load_config, model_depth

    weights = folder / "model.safetensors"
    keys: set[str] = set()
    for path in (weights, folder / HEAD_FILE):
        if not path.is_file():
            raise _damaged(path, "missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys |= set(handle.keys()) if path == weights else set()
        except Exception as exc:  # noqa: BLE001 - a truncated safetensors file raises SafetensorError
            raise _damaged(path, f"unreadable weights ({_first_line(exc)})") from None
    depth = model_depth(load_config(str(folder)), str(folder))
    layers = {int(part) for key in keys for prefix, part in _layer_indices(key)}
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


class StudentClassifier:
    """An exported MT-BERT student, ready to classify text."""

    def __init__(self, model: StudentModel, tokenizer, meta: dict) -> None:
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
        encoder = load_encoder(str(folder))
        model = StudentModel(encoder, meta["num_labels"], meta["query_dim"])
        try:
            load_model(model.head, str(folder / HEAD_FILE))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise _damaged(folder / HEAD_FILE, f"cannot load the head ({_first_line(exc)})") from None
        return cls(model.to(device), load_tokenizer(str(folder)), meta)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        extra = {k: v for k, v in self.meta.items() if k not in ("format", "num_labels", "label_names", "query_dim", "num_layers")}
        save_student(self.model, folder, self.label_names, **extra)
        self.tokenizer.save_pretrained(folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32) -> torch.Tensor:
        """Class probabilities [len(texts), C]."""
        if isinstance(texts, str):
            texts = [texts]
        max_length = int(self.meta.get("max_length", 512))
        out = []
        for start in range(0, len(texts), batch_size):
            pair = list(text_pairs[start : start + batch_size]) if text_pairs is not None else None
            enc = self.tokenizer(list(texts[start : start + batch_size]), pair, truncation=True, max_length=max_length,
                                 padding=True, return_tensors="pt")
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
    """The best checkpoint's student as a self-contained folder: weights, tokenizer, label map, config."""
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(checkpoint_student, tmp)
    load_tokenizer(init_from, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    meta = json.loads((tmp / META_FILE).read_text())
    meta.update(max_length=max_length, pair=pair, init_from=init_from, teachers=list(teachers))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    (tmp / "experiment.yaml").write_text(experiment_yaml)
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


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
    student = sum(safetensors_params(p) for p in student_dir.glob("model*.safetensors")) + safetensors_params(student_dir / HEAD_FILE)
    return {"teachers": teacher_params, "shared_head": safetensors_params(teachers_dir / HEADS_FILE), "student": student}
