"""An exported MT-BERT student, ready to classify text: ``StudentClassifier.from_pretrained(FOLDER).predict(texts)``.

Reads either export format (``models.student_io``); ``save_pretrained`` writes format 2, the transformers model folder
that ``pipeline("text-classification", model=FOLDER)`` loads.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model

from mtbert_ray.common.errors import MTBertError
from mtbert_ray.models.hf_student import MTBertStudentForSequenceClassification
from mtbert_ray.models.hub import load_encoder, load_tokenizer
from mtbert_ray.models.student import StudentModel
from mtbert_ray.models.student_io import (
    HEAD_FILE,
    check_student_weights,
    damaged,
    first_line,
    is_transformers_student,
    read_student_meta,
    save_transformers_student,
    to_transformers,
)


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
        check_student_weights(folder, meta)
        if is_transformers_student(folder):
            model = MTBertStudentForSequenceClassification.from_pretrained(str(folder))
        else:
            model = StudentModel(load_encoder(str(folder)), meta["num_labels"], meta["query_dim"])
            try:
                load_model(model.head, str(folder / HEAD_FILE))
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
                raise damaged(folder / HEAD_FILE, f"cannot load the head ({first_line(exc)})") from None
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
