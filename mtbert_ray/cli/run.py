"""``mtbert-ray run --config EXPERIMENT.yaml [--set dotted.key=value ...] [--storage DIR]`` (or ``python -m mtbert_ray.run``)

Runs one MT-BERT experiment (co-finetune → teacher cache → distill → export) on Ray Train and
prints the path of its run folder last (``result.json``, ``config.yaml``, ``student/``).
"""
from __future__ import annotations

import argparse
import sys

from mtbert_ray.cli.common import add_stage_flags, command_main
from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import load_config
from mtbert_ray.config.doc import settable_keys

NAME = "run"
HELP = "Run one MT-BERT experiment: co-finetune → teacher cache → distill → export; prints the run folder last."
STARTS_STAGES = True


def format_result(result, student_layers: int) -> str:
    """Teachers and student: the selection metric and the task's metrics on validation (selected epoch) and test."""
    metrics = list(dict.fromkeys([result.select["metric"], *result.data.get("metrics", [])]))

    def line(label: str, scores) -> str:
        cells = []
        for split in ("validation", "test"):
            values = scores.validation if split == "validation" else scores.test
            if values:
                shown = "  ".join(f"{m} {values[m]:.4f}" for m in metrics if m in values)
                cells.append(f"{'val' if split == 'validation' else 'test'}: {shown}")
        return f"{label}: {' | '.join(cells)}  params {scores.params:,}" + (f"  (epoch {scores.epoch})" if scores.epoch else "")

    lines = [line(f"teacher {name}", scores) for name, scores in result.teachers.items()]
    lines.append(line(f"student ({student_layers} layers)", result.student))
    lines.append(f"selected on validation {result.select['metric']} ({result.select['mode']})"
                 + (f"; {result.test_note}" if result.test_note else ""))
    for what, decision in result.decisions.items():
        lines.append(f"{what.replace('_', ' ')}: {decision}")
    lines.append(f"student export: {result.student_dir}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (required unless --list-keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted), repeatable")
    parser.add_argument("--storage", default=None, help="results root (default $MTBERT_RAY_STORAGE or ~/mtbert_results)")
    parser.add_argument("--run-dir", default=None, help="run folder (default <storage>/runs/<name>-<time>); an existing one resumes")
    parser.add_argument("--wait-for-resources", action="store_true",
                        help="on a cluster: check the plan against the whole cluster, not what other work leaves free, and wait")
    parser.add_argument("--list-keys", action="store_true", help="print every key --set takes, with its type and default, and exit")
    add_stage_flags(parser)


def run(args: argparse.Namespace) -> int:
    if args.list_keys:
        print(settable_keys())
        return 0
    if not args.config:
        raise ConfigError("--config: an experiment YAML is required (or --list-keys)")
    from mtbert_ray.experiment.pipeline import run_experiment  # deferred: it loads Ray and torch (seconds); --help stays instant

    config = load_config(args.config, args.set)
    result = run_experiment(config, storage=args.storage, run_dir=args.run_dir, verify=args.verify,
                            wait_for_resources=args.wait_for_resources)
    print(format_result(result, config.student.num_layers))
    print(result.run_dir)
    return 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.run", argv)


if __name__ == "__main__":
    main()
