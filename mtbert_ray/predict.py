"""``python -m mtbert_ray.predict --model FOLDER "some text" ["more text" ...]``

Loads an exported student and prints one JSON line per text: label and class probabilities.
Reads texts from standard input (one per line) when none are given.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtbert_ray.predict", description="Classify text with an exported student.")
    parser.add_argument("--model", required=True, help="exported student folder (a run's student/)")
    parser.add_argument("--pair", action="append", default=None, help="second text of a sentence pair (once per text)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runtime", choices=["torch", "onnx", "onnx-int8"], default="torch",
                        help="PyTorch, or the folder's model.onnx / model.int8.onnx (python -m mtbert_ray.export onnx)")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("texts", nargs="*")
    args = parser.parse_args(argv)

    from mtbert_ray.errors import ConfigError, run_cli

    def body() -> int:
        from mtbert_ray.export import StudentClassifier

        if args.batch_size < 1:
            raise ConfigError(f"--batch-size: expected a positive integer, got {args.batch_size}")
        texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if args.pair is not None and len(args.pair) != len(texts):
            raise ConfigError(f"--pair: given {len(args.pair)} times for {len(texts)} texts; expected one per text")
        if args.runtime == "torch":
            model = StudentClassifier.from_pretrained(args.model)
        else:
            from mtbert_ray.onnx_export import OnnxStudent

            model = OnnxStudent(args.model, int8=args.runtime == "onnx-int8")
        for text, pred in zip(texts, model.predict(texts, args.pair, args.batch_size)):
            print(json.dumps({"text": text, "label": pred.label, "probabilities": pred.probabilities}))
        return 0

    run_cli(body, args.debug)


if __name__ == "__main__":
    main()
