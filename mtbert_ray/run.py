"""``python -m mtbert_ray.run --config EXPERIMENT.yaml [--set dotted.key=value ...] [--storage DIR]``

Runs one MT-BERT experiment (co-finetune → teacher cache → distill → export) on Ray Train and
prints the path of its run folder last (``result.json``, ``config.yaml``, ``student/``).
"""
from __future__ import annotations

import argparse

from mtbert_ray.errors import add_stage_flags, start_cli


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtbert_ray.run", description="Run one MT-BERT experiment on Ray Train.")
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted), repeatable")
    parser.add_argument("--storage", default=None, help="results root (default $MTBERT_RAY_STORAGE or ~/mtbert_results)")
    parser.add_argument("--run-dir", default=None, help="run folder (default <storage>/runs/<name>-<time>); an existing one resumes")
    add_stage_flags(parser)
    args = parser.parse_args(argv)
    start_cli(args.debug)

    from mtbert_ray.errors import run_cli

    def body() -> int:
        from mtbert_ray.config import load_config
        from mtbert_ray.pipeline import run_experiment

        config = load_config(args.config, args.set)
        result = run_experiment(config, storage=args.storage, run_dir=args.run_dir, verify=args.verify)
        print(format_result(result, config.student.num_layers))
        print(result.run_dir)
        return 0

    run_cli(body, args.debug)


if __name__ == "__main__":
    main()
