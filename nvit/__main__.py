"""``python -m nvit {reproduce,report,presets,archtable}``; ``--help`` explains each.

Only the config is imported here: the rest (torch, timm) loads when a command runs, so ``--help`` is quick."""

from common.cli import Command, main

from . import config

COMMANDS = {
    "archtable": Command(
        "params, FLOPs and measured speedups of DeiT-B/S/T and ReViT-S/T (Tables 1 and 7), random weights",
        "nvit.archtable:configure",
        "nvit.archtable:handler",
    )
}

if __name__ == "__main__":
    raise SystemExit(
        main(
            "nvit",
            presets=config.PRESETS,
            run="nvit.reproduce:run",
            report="nvit.reproduce:report",
            commands=COMMANDS,
            supports_distributed=True,
        )
    )
