"""``python -m three_regime {reproduce,report,presets,grid,merge}``; ``--help`` explains each.

Under a launcher (``make reproduce-three_regime NPROC=N``) the grid's jobs are dealt over the N processes."""

from common.cli import main

from . import cli, config, reproduce

if __name__ == "__main__":
    raise SystemExit(
        main(
            "three_regime",
            presets=config.PRESETS,
            run=reproduce.run,
            report=reproduce.report,
            commands=cli.COMMANDS,
            supports_distributed=True,
        )
    )
