"""``mtbert-ray data prepare --config EXPERIMENT.yaml [--set key=value ...]`` (or ``python -m mtbert_ray.data``)

Validates the configured source, writes (or reuses) the tokenized shards for every distinct
tokenizer among the teachers and the student, and prints a summary: rows per split, label
distribution, token-length percentiles and truncation rate per tokenizer.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from mtbert_ray.cli.common import add_debug_flag, command_main
from mtbert_ray.config import experiment_models, head_teacher, load_config

if TYPE_CHECKING:
    from mtbert_ray.data.shards import PreparedData

NAME = "data"
HELP = "Check and tokenize a dataset: rows, labels, token lengths and truncation per tokenizer."


def format_summary(prepared: "PreparedData") -> str:
    s = prepared.summary
    lines = [f"dataset {s['dataset_key']}  ({'sentence pairs' if prepared.pair else 'single sentences'}, "
             f"{prepared.num_labels} labels)"]
    for split, n in s["rows"].items():
        dist = ", ".join(f"{name}: {count}" for name, count in s["labels"][split].items())
        lines.append(f"  {split:<10} {n:>8} rows   {dist}")
    for tokenization, info in s["tokenizers"].items():
        lines.append(f"  tokenizer {info['name']} (tokenization {tokenization})")
        for split in s["rows"]:
            st = info[split]
            lines.append(
                f"    {split:<10} tokens p50 {st['length_p50']:.0f}  p90 {st['length_p90']:.0f}  p99 {st['length_p99']:.0f}"
                f"  max {st['length_max']}   truncated {st['truncated']} ({100 * st['truncation_rate']:.1f}%)"
            )
    for note in prepared.notes:
        lines.append(f"  note: {note}")
    lines.append(f"view: {prepared.view_dir}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="validate and tokenize the configured dataset")
    prep.add_argument("--config", required=True, help="experiment YAML")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted)")
    add_debug_flag(prep)


def run(args: argparse.Namespace) -> int:
    # deferred: transformers' tokenizers take seconds to import; --help stays instant
    from mtbert_ray.data.shards import prepare_data
    from mtbert_ray.models.hub import check_models

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(args.config, args.set)
    # the models' own checks, as the run makes them: a data.max_length beyond a model's positions is refused here too
    check_models([*config.teachers, *filter(None, [head_teacher(config)])], config.student.init_from,
                 config.student.num_layers, config.trust_remote_code, config.data.max_length)
    prepared = prepare_data(config.data, experiment_models(config), config.trust_remote_code)
    print(format_summary(prepared))
    return 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.data", argv)


if __name__ == "__main__":
    main()
