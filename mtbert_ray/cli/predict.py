"""``mtbert-ray predict --model FOLDER "some text" ["more text" ...]`` (or ``python -m mtbert_ray.predict``)

Loads an exported student and prints one JSON line per text: label and class probabilities.
Reads texts from standard input (one per line) when none are given.
"""
from __future__ import annotations

import argparse
import json
import sys

from mtbert_ray.cli.common import add_debug_flag, command_main
from mtbert_ray.common.errors import ConfigError

NAME = "predict"
HELP = "Classify text with an exported student (PyTorch, ONNX or int8)."
RUNTIME_NAMES = ("torch", "onnx", "onnx-int8")  # deploy.runtimes.RUNTIMES (tests/test_layers.py keeps the two equal)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported student folder (a run's student/)")
    parser.add_argument("--pair", action="append", default=None, help="second text of a sentence pair (once per text)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runtime", choices=RUNTIME_NAMES, default="torch",
                        help="PyTorch, or the folder's model.onnx / model.int8.onnx (mtbert-ray export onnx)")
    add_debug_flag(parser)
    parser.add_argument("texts", nargs="*")


def run(args: argparse.Namespace) -> int:
    from mtbert_ray.deploy.runtimes import load_runtime  # deferred: torch, transformers, onnxruntime (seconds)

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.pair is not None and len(args.pair) != len(texts):
        raise ConfigError(f"--pair: given {len(args.pair)} times for {len(texts)} texts; expected one per text")
    model = load_runtime(args.runtime, args.model)
    for text, pred in zip(texts, model.predict(texts, args.pair, args.batch_size)):
        print(json.dumps({"text": text, "label": pred.label, "probabilities": pred.probabilities}))
    return 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.predict", argv)


if __name__ == "__main__":
    main()
