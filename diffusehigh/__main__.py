"""``python -m diffusehigh {reproduce,report,presets,train,generate}``; ``--help`` explains each.

Only the config is imported here: diffusers and torch load when a command runs, so ``--help`` is quick."""

from common.cli import Command, main

from . import config

COMMANDS = {
    "train": Command(
        "train the pixel base model of a preset and write it to diffusehigh/checkpoints/ (safetensors + JSON)",
        "diffusehigh.reproduce:configure_train",
        "diffusehigh.reproduce:train_command",
    ),
    "generate": Command(
        "generate (or, with --image, upscale) images with DiffuseHigh from a local diffusers model folder",
        "diffusehigh.generate:configure",
        "diffusehigh.generate:handler",
    ),
}

if __name__ == "__main__":
    raise SystemExit(
        main(
            "diffusehigh",
            presets=config.PRESETS,
            run="diffusehigh.reproduce:run",
            report="diffusehigh.reproduce:report",
            supports_distributed=True,  # seeds (pixel presets) or prompts (paper) split across processes
            commands=COMMANDS,
        )
    )
