"""``python -m masksparsity {reproduce,report,presets,architectures}``; ``--help`` explains each.

Only the config is imported here: the rest (torch) loads when a command runs, so ``--help`` is quick."""

import argparse

from common.cli import Command, main, readme_path

from . import config


def _configure_architectures(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-readme", action="store_true", help="print the table only, do not rewrite the README")


def _architectures(args: argparse.Namespace) -> int:
    from common.results import update_readme_block

    from .flops import architecture_table

    table = architecture_table()
    print(table)
    if not args.no_readme:
        update_readme_block(readme_path("masksparsity"), "architectures", table)
    return 0


COMMANDS = {
    "architectures": Command(
        "params and MACs of ResNet-56/110/50 in both FLOPs conventions (the card's architecture table)",
        _configure_architectures,
        _architectures,
    )
}

if __name__ == "__main__":
    kwargs = {"run": "masksparsity.reproduce:run", "report": "masksparsity.reproduce:report", "commands": COMMANDS}
    raise SystemExit(main("masksparsity", presets=config.PRESETS, supports_distributed=True, **kwargs))
