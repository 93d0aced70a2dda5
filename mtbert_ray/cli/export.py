"""``mtbert-ray export onnx|convert PATH`` (or ``python -m mtbert_ray.export``): an exported student as ONNX (and int8)
with parity, re-scoring and speed checks, or a format-1 export rewritten as a transformers folder (``deploy.export``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtbert_ray.cli.common import add_debug_flag, command_main

NAME = "export"
HELP = "Export an MT-BERT student: ONNX / int8 with parity and speed checks, or convert an old export."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    onnx = sub.add_parser("onnx", help="model.onnx (and model.int8.onnx), parity, re-scoring and speed")
    onnx.add_argument("path", help="a run folder or an exported student folder")
    onnx.add_argument("--int8", action="store_true", help="also write the dynamically quantised int8 model")
    onnx.add_argument("--no-speed", action="store_true", help="skip the latency / throughput measurement")
    onnx.add_argument("--tolerance", type=float, default=1.0,
                      help="deploy gate: keep a runtime whose validation accuracy is at most this many points below PyTorch's")
    onnx.add_argument("--class-tolerance", type=float, default=3.0,
                      help="deploy gate: … and each class's recall at most this many points below")
    convert = sub.add_parser("convert", help="rewrite a format-1 export as a transformers student (format 2)")
    convert.add_argument("path")
    convert.add_argument("--out", default=None, help="write here instead of in place (in place keeps <path>.format1)")
    for p in (onnx, convert):
        add_debug_flag(p)


def run(args: argparse.Namespace) -> int:
    from mtbert_ray.deploy.export import convert_student, export_onnx  # deferred: torch and transformers (seconds)

    if args.command == "convert":
        print(f"[mtbert] converted: {convert_student(Path(args.path), Path(args.out) if args.out else None)}")
        return 0
    report = export_onnx(Path(args.path), args.int8, speed=not args.no_speed, tolerance=args.tolerance,
                         class_tolerance=args.class_tolerance)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.export", argv)


if __name__ == "__main__":
    main()
