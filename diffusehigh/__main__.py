from common.cli import main

from . import config, generate, reproduce

if __name__ == "__main__":
    raise SystemExit(
        main(
            "diffusehigh",
            presets=config.PRESETS,
            run=reproduce.run,
            report=reproduce.report,
            supports_distributed=True,  # seeds (pixel presets) or prompts (paper) split across processes
            commands={"train": reproduce.TRAIN_COMMAND, "generate": generate.GENERATE_COMMAND},
        )
    )
