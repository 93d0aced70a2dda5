"""Ray Serve against offline batch throughput of the same student, side by side in one run.

    python benchmarks/serve.py [STUDENT_FOLDER] [--requests 400] [--concurrency 32] [--runtime onnx]

The student is an exported folder (default: the first 2 layers of MiniLM-L6 with an untrained head, exported and
converted to ONNX here — speed does not depend on the weights' values). Offline: ``predict_proba`` of the same runtime
on batches of 32, one replica's worth of CPU. Served: one replica (1 CPU) behind Serve's HTTP proxy on 127.0.0.1,
``@serve.batch`` up to 32 rows, ``--requests`` single-text POSTs from ``--concurrency`` client threads. Prints requests/s,
p50 / p99 latency and the ratio served / offline rows per second (the issue's target: ≥ 0.7), and the requests/s of
the same HTTP path to a deployment with no model — the ceiling Serve's proxy and the client threads leave when they
share the machine's cores with the replica.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common  # noqa: F401 - sets up sys.path and the environment

TEXTS = ["a gorgeous, witty movie", "dull and far too long", "the plot is thin but the actors carry it",
         "one of the best films of the year", "i would not watch it again", "an uneven, occasionally brilliant drama"]


def default_student(root: Path) -> Path:
    import torch

    from mtbert_ray.cli.export import main as export_main
    from mtbert_ray.models.hub import load_tokenizer
    from mtbert_ray.models.student import build_student
    from mtbert_ray.models.student_io import save_transformers_student, to_transformers

    torch.manual_seed(0)
    student = build_student(_common.MINILM_L6, 2, 2, 200)
    folder = root / "student"
    model = to_transformers(student, ["0", "1"], max_length=64, pair=False, teachers=[], init_from=_common.MINILM_L6)
    save_transformers_student(model, load_tokenizer(_common.MINILM_L6), folder, {})
    try:
        export_main(["onnx", str(folder), "--int8", "--no-speed"])
    except SystemExit as exc:
        if exc.code:
            raise
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("student", nargs="?")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "onnx-int8", "torch"])
    args = parser.parse_args()

    import ray
    from ray import serve

    from mtbert_ray.deploy.runtimes import load_runtime
    from mtbert_ray.deploy.serve import app

    folder = Path(args.student) if args.student else default_student(Path(tempfile.mkdtemp()))
    texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(args.requests)]

    model = load_runtime(args.runtime, folder)
    if hasattr(model, "session"):  # one thread, as the replica's 1 CPU
        from mtbert_ray.deploy.onnx import OnnxStudent

        model = OnnxStudent(folder, int8=args.runtime == "onnx-int8", threads=1)
    else:
        import torch

        torch.set_num_threads(1)
    model.predict(texts[:32], batch_size=32)
    started = time.perf_counter()
    model.predict(texts, batch_size=32)
    offline = len(texts) / (time.perf_counter() - started)

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
    class Echo:
        """The same HTTP path with no model: the ceiling the proxy and the clients leave on this machine."""

        async def __call__(self, request):
            body = json.loads(await request.body())
            return {"label": "0", "probabilities": {"0": 1.0}, "text": body.get("text")}

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app({"model_dir": str(folder), "runtime": args.runtime}), name="student", route_prefix="/")
        url = f"http://127.0.0.1:{port}/"

        def post(text: str) -> float:
            request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                             headers={"Content-Type": "application/json"})
            begun = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                json.loads(response.read())
            return (time.perf_counter() - begun) * 1000

        def burst() -> tuple[float, list[float]]:
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(post, texts[:64]))  # warm-up
                started = time.perf_counter()
                latencies = list(pool.map(post, texts))
                return len(texts) / (time.perf_counter() - started), latencies

        served, latencies = burst()
        sizes = json.loads(urllib.request.urlopen(url + "stats", timeout=30).read())["batch_sizes"]
        serve.delete("student")
        serve.run(Echo.bind(), name="echo", route_prefix="/")
        echo, _ = burst()
    finally:
        serve.shutdown()
        ray.shutdown()
    p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))]
    print(f"student {folder} runtime {args.runtime}; batch sizes served {sizes}", file=sys.stderr)
    print(f"offline batch-32 {offline:,.0f} rows/s; served {served:,.0f} requests/s at concurrency {args.concurrency} "
          f"(p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms); served / offline = {served / offline:.2f}; "
          f"the same HTTP path with no model: {echo:,.0f} requests/s (served / no-model = {served / echo:.2f})")


if __name__ == "__main__":
    main()
