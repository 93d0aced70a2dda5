"""``python -m mtbert_ray.run --config EXPERIMENT.yaml [--set dotted.key=value ...] [--storage DIR]``

Runs one MT-BERT experiment (co-finetune → teacher cache → distill → export) on Ray Train and
prints the path of its run folder last (``result.json``, ``config.yaml``, ``student/``).
"""
from __future__ import annotations

import argparse
import logging
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtbert_ray.run", description="Run one MT-BERT experiment on Ray Train.")
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted), repeatable")
    parser.add_argument("--storage", default=None, help="results root (default $MTBERT_RAY_STORAGE or ~/mtbert_results)")
    parser.add_argument("--run-dir", default=None, help="run folder (default <storage>/runs/<name>-<time>); an existing one resumes")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from mtbert_ray.errors import run_cli

    def body() -> int:
        from mtbert_ray.config import load_config
        from mtbert_ray.pipeline import run_experiment

        config = load_config(args.config, args.set)
        result = run_experiment(config, storage=args.storage, run_dir=args.run_dir)
        s = result.summary
        for name, m in s["stages"]["cofinetune"]["teachers"].items():
            print(f"teacher {name}: val accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  params {s['params']['teachers'][name]:,}")
        m = s["stages"]["distill"]["metrics"]
        print(f"student ({config.student.num_layers} layers): val accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
              f"params {s['params']['student']:,}  (best epoch {m['epoch']})")
        print(f"student export: {result.student_dir}")
        print(result.run_dir)
        return 0

    run_cli(body, args.debug)


if __name__ == "__main__":
    main()
