"""``python -m masksparsity {reproduce,report,presets}``; ``--help`` explains each."""

from common.cli import main

from . import config, reproduce

if __name__ == "__main__":
    raise SystemExit(main("masksparsity", presets=config.PRESETS, run=reproduce.run, report=reproduce.report))
