from common.cli import main

from . import config, generate, reproduce

if __name__ == "__main__":
    raise SystemExit(
        main(
            "diffusehigh",
            presets=config.PRESETS,
            run=reproduce.run,
            report=reproduce.report,
            commands={"train": reproduce.TRAIN_COMMAND, "generate": generate.GENERATE_COMMAND},
        )
    )
