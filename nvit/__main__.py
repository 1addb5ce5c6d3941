"""``python -m nvit {reproduce,report,presets,archtable}``; ``--help`` explains each."""

from common.cli import main

from . import archtable, config, reproduce

if __name__ == "__main__":
    raise SystemExit(
        main(
            "nvit",
            presets=config.PRESETS,
            run=reproduce.run,
            report=reproduce.report,
            commands={"archtable": archtable.command()},
            supports_distributed=True,
        )
    )
