"""Ray Serve against offline inference of the same student, measured side by side in one run, interleaved.

    python benchmarks/serve.py [STUDENT_FOLDER] [--runtime onnx] [--rounds 5] [--rows 1024] [--replicas 1]

The student is an exported folder (default: the first 2 layers of MiniLM-L6 with an untrained head, exported and
converted to ONNX here — speed does not depend on the weights' values). Every side runs the same runtime with one
intra-op thread (the replica has 1 CPU; the offline model is given the same one thread), on the same real test
sentences of rt_polarity.

Three request forms, each against offline inference at the same batch size and against the no-model ceiling:

- single-text requests (``{"text": ...}``), 32 client threads: Serve's ``@serve.batch`` gathers them (up to 32 rows);
- ``{"texts": [8 sentences]}`` and ``{"texts": [32 sentences]}`` requests, 4 client threads.

The client runs in a separate process (keep-alive HTTP connections, one per client thread), so it does not share the
interpreter with the offline side; the no-model ceiling is a deployment answering the same JSON without a model, on the
same proxy, measured in the same rounds. Each round times offline, served and ceiling for every form in a rotated
order; the figures are medians over the rounds (latency percentiles pooled). The last lines:
``serve_batch32_vs_offline=<ratio>`` (target ≥ 0.7) and ``serve_single_vs_ceiling=<ratio>`` (target ≥ 0.85).
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import _common

FORMS = {"single": (1, 32), "texts8": (8, 4), "texts32": (32, 4)}  # form → (rows per request, client threads)


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


# ---- the client: its own process, keep-alive connections, one per thread -------------------------------------

_local = threading.local()


def _post(port: int, path: str, body: bytes) -> float:
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = _local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    begun = time.perf_counter()
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {payload[:200]!r}")
    return (time.perf_counter() - begun) * 1000


def client_burst(port: int, path: str, bodies: list[bytes], threads: int) -> tuple[float, list[float]]:
    """POST every body with ``threads`` client threads (after a warm-up of 2 × threads): (seconds, latencies in ms)."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: _post(port, path, b), bodies[: 2 * threads]))
        started = time.perf_counter()
        latencies = list(pool.map(lambda b: _post(port, path, b), bodies))
        return time.perf_counter() - started, latencies


# ---- the measurement ------------------------------------------------------------------------------------------

@dataclass
class Figures:
    offline: list[float]  # rows/s per round
    served: list[float]
    ceiling: list[float]
    latencies: list[float]  # ms, served, pooled over rounds


def bodies_for(texts: list[str], rows: int) -> list[bytes]:
    if rows == 1:
        return [json.dumps({"text": t}).encode() for t in texts]
    return [json.dumps({"texts": texts[i:i + rows]}).encode() for i in range(0, len(texts) - rows + 1, rows)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", nargs="?")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "onnx-int8", "torch"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1024, help="sentences per form per round")
    parser.add_argument("--replicas", default="1", help="replicas of the student (N or auto)")
    parser.add_argument("--max-ongoing-requests", type=int, default=None)
    parser.add_argument("--card", action="store_true",
                        help="also write the served figures into the student's export report and model card")
    args = parser.parse_args()

    import pandas as pd
    import ray
    from ray import serve

    from mtbert_ray.deploy.runtimes import load_runtime
    from mtbert_ray.deploy.serve import app

    folder = Path(args.student) if args.student else default_student(Path(tempfile.mkdtemp()))
    sentences = pd.read_parquet(_common.DATA / "test.parquet")["sentence"].tolist()
    texts = [sentences[i % len(sentences)] for i in range(args.rows)]
    offline_model = load_runtime(args.runtime, folder, threads=1)  # the replica's one thread
    offline_model.predict(texts[:64], batch_size=32)

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
    class Ceiling:
        """The same HTTP path and JSON with no model: what the proxy and the client leave on this machine."""

        async def __call__(self, request):
            body = json.loads(await request.body())
            answer = {"label": "0", "probabilities": {"0": 1.0, "1": 0.0}}
            return answer if "text" in body else [answer for _ in body["texts"]]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # logical CPUs: replica, ceiling, proxy
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    figures = {form: Figures([], [], [], []) for form in FORMS}
    try:
        options = {"model_dir": str(folder), "runtime": args.runtime, "threads": "1"}
        if args.replicas != "1":
            options["num_replicas"] = args.replicas
        if args.max_ongoing_requests:
            options["max_ongoing_requests"] = str(args.max_ongoing_requests)
        serve.run(app(options), name="student", route_prefix="/student")
        serve.run(Ceiling.bind(), name="ceiling", route_prefix="/ceiling")
        client.submit(client_burst, port, "/ceiling", bodies_for(texts[:64], 1), 4).result()  # the client's start-up
        for r in range(args.rounds):
            forms = list(FORMS)
            forms = forms[r % len(forms):] + forms[: r % len(forms)]
            for form in forms:
                rows, threads = FORMS[form]
                bodies = bodies_for(texts, rows)
                n_rows = len(bodies) * rows
                sides = ["offline", "served", "ceiling"]
                for side in sides[r % 3:] + sides[: r % 3]:
                    if side == "offline":
                        started = time.perf_counter()
                        offline_model.predict(texts[:n_rows], batch_size=rows)
                        figures[form].offline.append(n_rows / (time.perf_counter() - started))
                    else:
                        path = "/student" if side == "served" else "/ceiling"
                        seconds, latencies = client.submit(client_burst, port, path, bodies, threads).result()
                        getattr(figures[form], side).append(n_rows / seconds)
                        if side == "served":
                            figures[form].latencies += latencies
            print(f"[serve] round {r + 1}/{args.rounds} done", flush=True)
    finally:
        client.shutdown()
        serve.shutdown()
        ray.shutdown()

    _common.header(f"Ray Serve vs offline, {args.runtime}, 1 thread per side, replicas {args.replicas}; "
                   f"{args.rounds} interleaved rounds of {args.rows} real test sentences per form")
    print("| request form | client threads | offline rows/s (same batch) | served rows/s | no-model ceiling rows/s | "
          "served / offline | served / ceiling | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for form, (rows, threads) in FORMS.items():
        f = figures[form]
        offline, served, ceiling = (statistics.median(v) for v in (f.offline, f.served, f.ceiling))
        vs_offline = statistics.median(s / o for s, o in zip(f.served, f.offline))
        vs_ceiling = statistics.median(s / c for s, c in zip(f.served, f.ceiling))
        ratios[form] = (vs_offline, vs_ceiling)
        print(f"| {form} ({rows} row{'s' if rows > 1 else ''}/request) | {threads} | {offline:,.0f} | {served:,.0f} | "
              f"{ceiling:,.0f} | {vs_offline:.2f} | {vs_ceiling:.2f} | {percentile(f.latencies, 0.5):.1f} | "
              f"{percentile(f.latencies, 0.95):.1f} | {percentile(f.latencies, 0.99):.1f} |")
    if args.card:
        from mtbert_ray.deploy.export import record_served

        served = {f"{form} ({FORMS[form][0]} row(s)/request, {FORMS[form][1]} client threads)": {
            "rows_per_s": statistics.median(figures[form].served), "p50_ms": percentile(figures[form].latencies, 0.5),
            "p99_ms": percentile(figures[form].latencies, 0.99)} for form in FORMS}
        print(f"card: {record_served(folder, served)}")
    single_vs_batch32 = statistics.median(s / o for s, o in zip(figures["single"].served, figures["texts32"].offline))
    print(f"single-text requests / offline at batch 32: {single_vs_batch32:.2f}")
    print(f"serve_batch32_vs_offline={ratios['texts32'][0]:.2f}")
    print(f"serve_single_vs_ceiling={ratios['single'][1]:.2f}")


if __name__ == "__main__":
    main()
