"""``mtbert-ray device-check [--tiny] [--cpu] [--precisions ...]`` (or ``python -m mtbert_ray.device_check``): the
MT-BERT core on one device in minutes — no Ray, no hub, no network (``tools.device_check``). Prints one JSON report;
exit status 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from mtbert_ray.cli.common import add_debug_flag, command_main

NAME = "device-check"
HELP = "Check the torch-only core on one device (CUDA by default): steps, precisions, accumulation, resume — no Ray."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-wide models (seconds; for CI)")
    parser.add_argument("--cpu", action="store_true", help="check the CPU instead of the CUDA device")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=None,
                        help="default: fp32 bf16 fp16 on CUDA, fp32 bf16 on the CPU")
    add_debug_flag(parser)


def run(args: argparse.Namespace) -> int:
    from mtbert_ray.tools.device_check import run as check  # deferred: torch and transformers (seconds)

    precisions = args.precisions
    if precisions is not None and "fp32" not in precisions:
        precisions = ["fp32", *precisions]  # the reference of the tolerance checks
    report = check(args.tiny, args.cpu, precisions)
    print(json.dumps(report, default=str), flush=True)
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.device_check", argv)


if __name__ == "__main__":
    main()
