"""``python -m three_regime {reproduce,report,presets,grid,merge}``; ``--help`` explains each.

Under a launcher (``make reproduce-three_regime NPROC=N``) the grid's jobs are dealt over the N processes.
Only the config is imported here: the rest (torch) loads when a command runs, so ``--help`` is quick."""

from common.cli import Command, main

from . import config

COMMANDS = {
    "grid": Command("run one shard of a preset's grid into the cache (no record); see three_regime/cli.py",
                    "three_regime.cli:configure_grid", "three_regime.cli:grid_command"),
    "merge": Command("copy finished grid jobs from other caches into this one",
                     "three_regime.cli:configure_merge", "three_regime.cli:merge_command"),
}  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(
        main(
            "three_regime",
            presets=config.PRESETS,
            run="three_regime.reproduce:run",
            report="three_regime.reproduce:report",
            commands=COMMANDS,
            supports_distributed=True,
        )
    )
