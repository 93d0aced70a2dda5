"""ONNX and int8 exports of a student, their parity with PyTorch, and their speed — measured, not assumed.

``python -m mtbert_ray.export onnx RUN_OR_STUDENT [--int8]`` (the ``[onnx]`` extra: onnx + onnxruntime):

- ``model.onnx``: the student traced with ``torch.onnx.export`` (the TorchScript exporter; the dynamo one fails on the
  pooling's data-dependent empty-row check), dynamic batch and sequence axes, logits out;
- ``model.int8.onnx`` (``--int8``): onnxruntime's dynamic quantisation (int8 weights of every MatMul);
- parity on real rows (the run's test texts when its data is readable, else fixed sentences): fp32 logits within
  ``PARITY_ATOL`` of PyTorch at batch 1, 3 and 8, lengths up to the student's ``max_length``;
- the test split re-scored with fp32 and int8 (accuracy and the change);
- speed side by side in this process, one thread each: batch-1 latency (p50 / p95) and batch-32 throughput for
  PyTorch fp32, ORT fp32, ORT int8 and the deepest teacher's encoder (PyTorch) — written to ``onnx_report.json``,
  the run's ``result.json`` (``export``) and the model card.

A row with no real token has no attentive-pooling summary: ``OnnxStudent`` refuses it before the session runs (the
graph itself has no check — the exporter drops data-dependent branches), as the PyTorch model does.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtbert_ray.common.errors import ConfigError, MTBertError
from mtbert_ray.deploy.classifier import Prediction, encoded_batches
from mtbert_ray.models.hub import load_encoder, load_tokenizer
from mtbert_ray.models.student_io import META_FILE, read_student_meta

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "onnx_report.json"
PARITY_ATOL = 1e-4
OPSET = 17
SAMPLE_TEXTS = (
    "a fine film", "the plot is thin but the actors carry it", "dull", "one of the best films of the year, "
    "funny and sad at once", "i would not watch it again", "an uneven, overlong and occasionally brilliant drama",
    "ok", "the ending", "it is neither good nor bad, just there", "a triumph",
)


def _require_onnxruntime():
    try:  # deferred: onnx and onnxruntime are the optional [onnx] extra
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ConfigError("export onnx: onnx and onnxruntime are not installed; pip install 'mtbert-ray[onnx]'") from None
    return onnxruntime


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, with_types: bool) -> None:
        super().__init__()
        self.model, self.with_types = model, with_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.with_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def _input_names(tokenizer) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def export_onnx_files(classifier, folder: Path, int8: bool) -> list[Path]:
    """``model.onnx`` (and ``model.int8.onnx``) of a ``StudentClassifier`` into ``folder``."""
    _require_onnxruntime()
    model = classifier.model.eval()
    names = _input_names(classifier.tokenizer)
    wrapper = _LogitsOnly(model, "token_type_ids" in names).eval()
    sample = classifier.tokenizer(["a fine film", "a longer sentence to give the batch two lengths"], padding=True,
                                  return_tensors="pt")
    args = tuple(sample[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    path = folder / ONNX_FILE
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    written = [path]
    if int8:  # deferred: the optional [onnx] extra
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(path), str(folder / INT8_FILE), weight_type=QuantType.QInt8)
        written.append(folder / INT8_FILE)
    return written


class OnnxStudent:
    """An exported student run by onnxruntime: the same ``predict`` / ``predict_proba`` as ``StudentClassifier``."""

    def __init__(self, folder: str | Path, int8: bool = False, threads: int | None = None) -> None:
        ort = _require_onnxruntime()
        folder = Path(folder)
        path = folder / (INT8_FILE if int8 else ONNX_FILE)
        if not path.is_file():
            raise MTBertError(f"{path}: no such file; run python -m mtbert_ray.export onnx {folder}" + (" --int8" if int8 else ""))
        self.meta = read_student_meta(folder)
        self.label_names = list(self.meta["label_names"])
        self.tokenizer = load_tokenizer(str(folder))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        classes = self.session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.label_names):
            raise MTBertError(f"{path}: gives {classes} classes but {META_FILE} names {len(self.label_names)}; "
                              f"export it again (mtbert-ray export onnx {folder})")

    def logits(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        mask = encoded["attention_mask"]
        if not bool((mask != 0).any(axis=-1).all()):
            raise MTBertError("a row of attention_mask has no real token (an empty text?); the student cannot summarise it")
        return self.session.run(["logits"], {n: encoded[n].astype(np.int64) for n in self.inputs})[0]

    def predict_proba(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32) -> np.ndarray:
        out = []
        for _, enc in encoded_batches(self.tokenizer, texts, text_pairs, batch_size, int(self.meta.get("max_length", 512)), "np"):
            logits = self.logits(dict(enc))
            exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
            out.append(exp / exp.sum(axis=-1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)), dtype=np.float32)

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32):
        probs = self.predict_proba(texts, text_pairs, batch_size)
        return [Prediction(self.label_names[int(r.argmax())], int(r.argmax()), {n: float(p) for n, p in zip(self.label_names, r)})
                for r in probs]


# ---- checks and measurements ----------------------------------------------------------------------------------------

def parity(classifier, onnx: OnnxStudent, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, Any]:
    """Max |logit difference| of ORT against PyTorch at batch 1, 3 and 8, the rows padded to their longest, one row at
    the student's ``max_length`` (a text repeated until it is truncated)."""
    max_length = int(classifier.meta.get("max_length", 512))
    rows = list(texts[:8]) + [" ".join(list(texts[:1]) * max_length)]
    row_pairs = (list(pairs[:8]) + list(pairs[:1])) if pairs is not None else None
    worst, longest = 0.0, 0
    for batch in (1, 3, 8):
        for start in range(0, len(rows), batch):
            pair = row_pairs[start:start + batch] if row_pairs is not None else None
            enc = classifier.tokenizer(rows[start:start + batch], pair, truncation=True, max_length=max_length, padding=True,
                                       return_tensors="np")
            longest = max(longest, enc["input_ids"].shape[1])
            with torch.no_grad():
                feed = {k: torch.from_numpy(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                reference = classifier.model(**feed).logits.numpy()
            worst = max(worst, float(np.abs(onnx.logits(dict(enc)) - reference).max()))
    return {"max_abs_logit_diff": worst, "longest_tokens": int(longest), "batches": [1, 3, 8], "atol": PARITY_ATOL}


def _time_per_call(fn, reps: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_speed(classifier, sessions: dict[str, OnnxStudent], texts: Sequence[str], teacher: str | None = None,
                  reps: int = 30) -> dict[str, dict[str, float]]:
    """Batch-1 latency (p50, p95 ms over ``reps`` calls), batch-8 and batch-32 rows/s of each runtime, in this process,
    one thread each, on the same tokenized rows."""
    max_length = int(classifier.meta.get("max_length", 512))
    rows32 = [texts[i % len(texts)] for i in range(32)]
    one = classifier.tokenizer(rows32[:1], truncation=True, max_length=max_length, return_tensors="np")
    eight = classifier.tokenizer(rows32[:8], truncation=True, max_length=max_length, padding=True, return_tensors="np")
    many = classifier.tokenizer(rows32, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def torch_call(model, enc):
            feed = {k: torch.from_numpy(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.no_grad():
                return model(**feed)

        runtimes: dict[str, Any] = {"torch fp32": lambda enc: torch_call(classifier.model, enc)}
        for name, session in sessions.items():
            runtimes[name] = lambda enc, s=session: s.logits(dict(enc))
        if teacher:
            encoder = load_encoder(teacher).eval()
            tok = load_tokenizer(teacher)
            t_enc = {id(one): tok(rows32[:1], truncation=True, max_length=max_length, return_tensors="np"),
                     id(eight): tok(rows32[:8], truncation=True, max_length=max_length, padding=True, return_tensors="np"),
                     id(many): tok(rows32, truncation=True, max_length=max_length, padding=True, return_tensors="np")}
            runtimes[f"teacher {teacher} (torch fp32)"] = lambda enc, e=encoder: torch_call(e, t_enc[id(enc)])
        out = {}
        for name, call in runtimes.items():
            single = _time_per_call(lambda c=call: c(one), reps)
            batch8 = _time_per_call(lambda c=call: c(eight), max(3, reps // 3))
            batch = _time_per_call(lambda c=call: c(many), max(3, reps // 5))
            out[name] = {"p50_ms": statistics.median(single), "p95_ms": float(np.percentile(single, 95)),
                         "batch8_rows_per_s": 8 * 1000 / statistics.median(batch8),
                         "batch32_rows_per_s": 32 * 1000 / statistics.median(batch)}
        return out
    finally:
        torch.set_num_threads(threads)


def accuracy(predict_proba, texts: Sequence[str], pairs: Sequence[str] | None, labels: Sequence[int]) -> float:
    probs = np.asarray(predict_proba(texts, pairs, 32))
    return float((probs.argmax(axis=-1) == np.asarray(labels)).mean()) if len(labels) else float("nan")
