"""``mtbert-ray serve MODEL_DIR [--runtime onnx|onnx-int8|torch] [--port 8000]``: an exported student on Ray Serve, bound
to 127.0.0.1 unless ``--host`` says otherwise (the application of ``deploy.serve``; the same as
``serve run mtbert_ray.serve:app model_dir=MODEL_DIR``). Runs until Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mtbert_ray.cli.common import add_debug_flag, command_main
from mtbert_ray.cli.predict import RUNTIME_NAMES
from mtbert_ray.common.errors import ConfigError

NAME = "serve"
HELP = "Serve an exported student over HTTP with Ray Serve (batched; 127.0.0.1 by default)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="an exported student folder (a run's student/)")
    parser.add_argument("--runtime", choices=RUNTIME_NAMES, default=None,
                        help="default: onnx when the folder has model.onnx, else torch")
    parser.add_argument("--host", default="127.0.0.1", help="address Serve's HTTP proxy listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (and CPUs) of each replica (default 1)")
    parser.add_argument("--replicas", default=None, metavar="N|auto",
                        help="replicas of the model (auto: Serve's autoscaling on ongoing requests; default 1)")
    add_debug_flag(parser)


def run(args: argparse.Namespace) -> int:
    # deferred: Ray Serve is the optional [serve] extra and takes seconds to import
    from ray import serve

    from mtbert_ray.deploy.serve import app

    if not Path(args.model_dir).is_dir():
        raise ConfigError(f"model_dir: {args.model_dir} is not a folder; expected an exported student (a run's student/)")
    options = {"model_dir": args.model_dir, "max_batch_size": str(args.max_batch_size),
               "batch_wait_timeout_s": str(args.batch_wait_timeout_s)}
    if args.runtime:
        options["runtime"] = args.runtime
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads: expected a positive integer, got {args.threads}")
        options["threads"] = str(args.threads)
    if args.replicas is not None:
        if args.replicas != "auto" and not (args.replicas.isdigit() and int(args.replicas) >= 1):
            raise ConfigError(f"--replicas: expected a positive integer or auto, got {args.replicas!r}")
        options["num_replicas"] = args.replicas
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app(options), blocking=False)
    print(f"[mtbert] serving {args.model_dir} on http://{args.host}:{args.port}/ (POST {{\"text\": ...}}; Ctrl-C stops)", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "mtbert-ray serve", argv)


if __name__ == "__main__":
    main()
