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
from starlette.responses import JSONResponse

from mtbert_ray.deploy.runtimes import default_runtime, load_runtime

MAX_TEXTS_PER_REQUEST = 256
MAX_BODY_BYTES = 1 << 20  # 256 texts of 4 kB: a larger body is a 413, refused before it is read whole
MAX_DEPTH = 8  # the API's bodies nest 2 deep; deeper ones are refused before the JSON parser recurses into them


class BadRequest(ValueError):
    """A request body the API does not take (answered with 400 — or ``status`` — and this one line)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def nesting_depth(raw: bytes, limit: int) -> int:
    """The deepest nesting of JSON arrays and objects in ``raw`` (strings skipped), counted up to ``limit + 1``: one
    linear pass and no recursion, so a body of 100,000 ``[`` costs what its bytes cost."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_body(raw: bytes, pair: bool) -> tuple[list[str], list[str] | None, bool]:
    """(texts, pairs or None, whether the caller sent one text) of a request body; ``BadRequest`` otherwise (413 for a
    body over ``MAX_BODY_BYTES``). Whatever the parser raises on a body it cannot read is a ``BadRequest``."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is {len(raw):,} bytes; at most {MAX_BODY_BYTES:,}", status=413)
    if nesting_depth(raw, MAX_DEPTH) > MAX_DEPTH:
        raise BadRequest(f"the body nests deeper than {MAX_DEPTH} levels; expected {{\"text\": \"...\"}} or "
                         "{\"texts\": [\"...\"]}")
    try:
        body = json.loads(raw or b"null")
    except Exception:  # noqa: BLE001 - ValueError, UnicodeDecodeError, RecursionError, …: every unreadable body is a 400
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


async def read_body(request) -> bytes:
    """The request's body, read only up to ``MAX_BODY_BYTES`` + 1 (a 413 is known from Content-Length or that byte)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is {int(declared):,} bytes; at most {MAX_BODY_BYTES:,}", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            break
    return b"".join(chunks)


REPLICA_CPUS = 1  # each replica's CPUs, and the intra-op threads of its runtime unless ``threads`` is given


@serve.deployment(ray_actor_options={"num_cpus": REPLICA_CPUS}, max_ongoing_requests=256)
class StudentDeployment:
    def __init__(self, model_dir: str, runtime: str = "onnx", max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01,
                 threads: int | None = None) -> None:
        self.runtime = runtime
        # as many intra-op threads as the replica has CPUs: onnxruntime's default (one per core of the machine)
        # would contend with the proxy and the other replicas on the same node
        self.model = load_runtime(runtime, model_dir, threads=threads or REPLICA_CPUS)
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
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/healthz"):
            return {"status": "ok", "runtime": self.runtime, "labels": self.model.label_names}
        if request.method == "GET" and path.endswith("/stats"):
            return {"batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}
        if request.method != "POST":
            return JSONResponse({"error": "POST a JSON body to classify; GET /healthz or /stats"}, status_code=405)
        try:
            texts, pairs, single = parse_body(await read_body(request), self.pair)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        answers = await asyncio.gather(*(self.classify((t, pairs[i] if pairs else None)) for i, t in enumerate(texts)))
        return answers[0] if single else answers


def _positive_int(args: dict[str, str], key: str) -> int | None:
    value = args.get(key)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{key}: expected a positive integer, got {value!r}")
    return number


def app(args: dict[str, str]):
    """The application ``serve run mtbert_ray.serve:app model_dir=FOLDER [runtime=onnx|onnx-int8|torch]
    [max_batch_size=32] [batch_wait_timeout_s=0.01] [threads=1] [num_replicas=1|auto] [max_ongoing_requests=256]``
    builds (runtime: onnx when the folder has model.onnx, else torch; threads: each replica's CPUs and its runtime's
    intra-op threads, default 1). A value that is not a positive integer is a ``ValueError`` naming it."""
    if "model_dir" not in args:
        raise ValueError("serve run mtbert_ray.serve:app needs model_dir=FOLDER (an exported student)")
    folder = Path(args["model_dir"]).expanduser().resolve()
    runtime = args.get("runtime") or default_runtime(folder)
    threads = _positive_int(args, "threads")
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": threads or REPLICA_CPUS}}
    if args.get("num_replicas"):
        options["num_replicas"] = "auto" if args["num_replicas"] == "auto" else _positive_int(args, "num_replicas")
    if args.get("max_ongoing_requests"):
        options["max_ongoing_requests"] = _positive_int(args, "max_ongoing_requests")
    return StudentDeployment.options(**options).bind(str(folder), runtime, int(args.get("max_batch_size", 32)),
                                                     float(args.get("batch_wait_timeout_s", 0.01)), threads)
