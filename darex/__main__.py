"""``python -m darex {reproduce,report,presets,prune}``; ``--help`` explains each."""

from common.cli import main

from . import config, prune_cli, reproduce

if __name__ == "__main__":
    commands = {"prune": prune_cli.COMMAND}
    raise SystemExit(
        main(
            "darex",
            presets=config.PRESETS,
            run=reproduce.run,
            report=reproduce.report,
            commands=commands,
            supports_distributed=True,
        )
    )
