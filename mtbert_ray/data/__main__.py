"""``python -m mtbert_ray.data prepare --config EXPERIMENT.yaml [--set key=value ...]``

Validates the configured source, writes (or reuses) the tokenized shards for every distinct
tokenizer among the teachers and the student, and prints a summary: rows per split, label
distribution, token-length percentiles and truncation rate per tokenizer.
"""
from __future__ import annotations

import argparse
import logging

from mtbert_ray.config import experiment_models, load_config
from mtbert_ray.data.shards import PreparedData, prepare_data
from mtbert_ray.errors import run_cli


def format_summary(prepared: PreparedData) -> str:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mtbert_ray.data", description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="validate and tokenize the configured dataset")
    prep.add_argument("--config", required=True, help="experiment YAML")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted)")
    prep.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        config = load_config(args.config, args.set)
        prepared = prepare_data(config.data, experiment_models(config), config.trust_remote_code)
        print(format_summary(prepared))
        return 0

    run_cli(body, args.debug)


if __name__ == "__main__":
    main()
