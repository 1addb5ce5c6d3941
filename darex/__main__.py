"""``python -m darex {reproduce,report,presets,prune}``; ``--help`` explains each.

The reproduction and the ``prune`` command load (transformers, the experiments) only when they run."""

from common.cli import Command, main

from . import config

COMMANDS = {
    "prune": Command("prune a fine-tuned model's deltas against its base, evaluate and save",
                     "darex.prune_cli:configure", "darex.prune_cli:handle"),
}  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(
        main(
            "darex",
            presets=config.PRESETS,
            run="darex.reproduce:run",
            report="darex.reproduce:report",
            commands=COMMANDS,
            supports_distributed=True,
        )
    )
