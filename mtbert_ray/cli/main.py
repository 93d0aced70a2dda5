"""``mtbert-ray``: one command for everything, the way ``ray``, ``huggingface-cli`` and ``optimum-cli`` work.

    mtbert-ray run --config EXPERIMENT.yaml          one experiment (co-finetune → cache → distill → export)
    mtbert-ray sweep --space tune_spaces/X.yaml      a study on Ray Tune (--dry-run: the plan)
    mtbert-ray analysis SWEEP                        its tables, plots and archive
    mtbert-ray predict --model FOLDER TEXT ...       classify with an exported student
    mtbert-ray export onnx|convert PATH              ONNX / int8, or an old export converted
    mtbert-ray serve FOLDER                          Ray Serve on 127.0.0.1
    mtbert-ray data prepare --config EXPERIMENT.yaml check and tokenize a dataset
    mtbert-ray device-check                          the torch-only core on one GPU, no Ray

Each subcommand's parser is the one its ``python -m mtbert_ray.<name>`` form uses (``mtbert_ray.cli.<name>``).
"""
from __future__ import annotations

import argparse

from mtbert_ray import __version__
from mtbert_ray.cli import analysis, data, device_check, export, predict, run, serve, sweep
from mtbert_ray.cli.common import build_parser, run_command

COMMANDS = (run, sweep, analysis, predict, export, serve, data, device_check)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mtbert-ray", description="Multi-teacher knowledge distillation (MT-BERT) on Ray.")
    top.add_argument("--version", action="version", version=f"mtbert-ray {__version__}")
    sub = top.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for command in COMMANDS:
        build_parser(command, "", sub.add_parser(command.NAME, help=command.HELP, description=command.HELP))
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    command = next(c for c in COMMANDS if c.NAME == args.subcommand)
    run_command(command, args)


if __name__ == "__main__":
    main()
