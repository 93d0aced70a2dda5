"""Ray Serve deployment of an exported student: ``serve run mtbert_ray.serve:app model_dir=FOLDER [runtime=onnx]``.

(The ``[serve]`` extra: ``ray[serve]`` at the project's Ray version.) Requests are batched across callers with
``@serve.batch`` (``max_batch_size`` rows, waiting at most ``batch_wait_timeout_s`` to fill a batch) and run on
onnxruntime (``model.onnx`` / ``model.int8.onnx`` from ``python -m mtbert_ray.export onnx``) or PyTorch. Serve's HTTP
proxy listens on 127.0.0.1:8000 unless told otherwise (``serve run --address`` / Serve's ``http_options``).

HTTP API (JSON):

- ``POST /`` with ``{"text": "..."}`` → ``{"label": ..., "probabilities": {...}}``; with ``{"texts": [...]}`` → a list of
  those; sentence-pair students take ``"text_pair"`` / ``"text_pairs"`` beside them. A bad body is a 400 with
  ``{"error": "<one line>"}``.
- ``GET /healthz`` → ``{"status": "ok", "runtime": ..., "labels": [...]}``.
- ``GET /stats`` → how many batches of each size the model ran (``{"batch_sizes": {"1": 3, "8": 12}}``).
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ray import serve

from mtbert_ray.deploy.classifier import StudentClassifier
from mtbert_ray.deploy.onnx import OnnxStudent

MAX_TEXTS_PER_REQUEST = 256


class BadRequest(ValueError):
    """A request body the API does not take (answered with 400 and this one line)."""


def parse_body(raw: bytes, pair: bool) -> tuple[list[str], list[str] | None, bool]:
    """(texts, pairs or None, whether the caller sent one text) of a request body; ``BadRequest`` otherwise."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON; expected {\"text\": \"...\"} or {\"texts\": [\"...\"]}") from None
    if not isinstance(body, dict) or ("text" in body) == ("texts" in body):
        raise BadRequest("expected a JSON object with exactly one of \"text\" (a string) or \"texts\" (a list of strings)")
    single = "text" in body
    texts = [body["text"]] if single else body["texts"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise BadRequest("\"text\" must be a non-empty string, \"texts\" a non-empty list of non-empty strings")
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise BadRequest(f"\"texts\": {len(texts)} texts in one request; at most {MAX_TEXTS_PER_REQUEST}")
    key = "text_pair" if single else "text_pairs"
    pairs = None
    if pair:
        pairs = [body.get(key)] if single else body.get(key)
        if not isinstance(pairs, list) or len(pairs) != len(texts) or not all(isinstance(p, str) and p.strip() for p in pairs):
            raise BadRequest(f"this student classifies sentence pairs: give \"{key}\" beside \"{'text' if single else 'texts'}\"")
    elif key in body:
        raise BadRequest(f"this student classifies single sentences: \"{key}\" is not taken")
    return texts, pairs, single


def load_model(model_dir: str, runtime: str):
    """``OnnxStudent`` (``onnx`` / ``onnx-int8``) or ``StudentClassifier`` (``torch``) of an exported folder."""
    if runtime == "torch":

        return StudentClassifier.from_pretrained(model_dir)
    if runtime in ("onnx", "onnx-int8"):

        return OnnxStudent(model_dir, int8=runtime == "onnx-int8")
    raise ValueError(f"runtime: expected torch, onnx or onnx-int8, got {runtime!r}")


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class StudentDeployment:
    def __init__(self, model_dir: str, runtime: str = "onnx", max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01) -> None:
        self.runtime = runtime
        self.model = load_model(model_dir, runtime)
        self.pair = bool(self.model.meta.get("pair"))
        self.batch_sizes: Counter[int] = Counter()
        self.classify.set_max_batch_size(max_batch_size)
        self.classify.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def classify(self, rows: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """One model call for every row Serve gathered into this batch."""
        self.batch_sizes[len(rows)] += 1
        texts = [t for t, _ in rows]
        pairs = [p for _, p in rows] if self.pair else None
        predictions = self.model.predict(texts, pairs, batch_size=len(rows))
        return [{"label": p.label, "probabilities": p.probabilities} for p in predictions]

    async def __call__(self, request) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/healthz"):
            return {"status": "ok", "runtime": self.runtime, "labels": self.model.label_names}
        if request.method == "GET" and path.endswith("/stats"):
            return {"batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}
        if request.method != "POST":
            return JSONResponse({"error": "POST a JSON body to classify; GET /healthz or /stats"}, status_code=405)
        try:
            texts, pairs, single = parse_body(await request.body(), self.pair)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        answers = await asyncio.gather(*(self.classify((t, pairs[i] if pairs else None)) for i, t in enumerate(texts)))
        return answers[0] if single else answers


def app(args: dict[str, str]):
    """The application ``serve run mtbert_ray.serve:app model_dir=FOLDER [runtime=onnx|onnx-int8|torch]
    [max_batch_size=32] [batch_wait_timeout_s=0.01]`` builds (runtime: onnx when the folder has model.onnx, else torch)."""
    if "model_dir" not in args:
        raise ValueError("serve run mtbert_ray.serve:app needs model_dir=FOLDER (an exported student)")
    folder = Path(args["model_dir"]).expanduser().resolve()
    runtime = args.get("runtime") or ("onnx" if (folder / "model.onnx").is_file() else "torch")
    return StudentDeployment.bind(str(folder), runtime, int(args.get("max_batch_size", 32)),
                                  float(args.get("batch_wait_timeout_s", 0.01)))
