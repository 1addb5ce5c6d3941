"""``python -m diffusehigh generate``: DiffuseHigh images from a local diffusers model folder, written as PNGs.

    python -m diffusehigh generate --model-dir /models/sdxl-base-1.0 --prompt "a red fox in snow" --target 2048
    python -m diffusehigh generate --model-dir /models/sdxl-base-1.0 --prompt "a red fox" --image fox.png \\
        --target 2048 --out upscaled/

The folder is checked before anything is loaded (a missing or incomplete folder is one line, exit status 2);
SDXL (and SDXL-architecture checkpoints) and SD 1.x / 2.x folders are recognised by their model_index.json. Every
PNG carries the settings that made it in its metadata (a ``diffusehigh`` text chunk holding JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import torch

from common import runtime
from common.errors import PathNotFoundError, UserError, require_path

from .config import MODEL_DIR_HINT, README_NEGATIVE_PROMPT

log = logging.getLogger(__name__)

METADATA_KEY = "diffusehigh"
"""The PNG text chunk that holds the settings (JSON)."""


def _sizes(text: str) -> list[int]:
    """``2048`` or ``1536,2048``: one size per stage."""
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"sizes are integers separated by commas, got {text!r}") from err
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sizes


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model-dir", required=True, help="local diffusers pipeline folder (SDXL or SD 1.x / 2.x); never downloaded")
    add("--prompt", required=True, help="text prompt")
    add(
        "--negative-prompt",
        default=None,
        help=f"negative prompt (default for SDXL: the official README's, {README_NEGATIVE_PROMPT!r}; SD: none)",
    )
    add(
        "--target",
        type=_sizes,
        default=None,
        help="stage size(s), e.g. 2048 or 1536,2048 (default SDXL: 2048,3072,4096; SD: twice the base size)",
    )
    add("--target-width", type=_sizes, default=None, help="stage widths when they differ from --target's heights")
    add(
        "--image",
        type=Path,
        default=None,
        help="upscale this image instead of generating the base image (resized to the base size)",
    )
    add("--height", type=int, default=None, help="base height (default: the model's native size)")
    add("--width", type=int, default=None, help="base width (default: the model's native size)")
    add("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    add("--num-images", type=int, default=1, help="how many images (one seed each)")
    add("--steps", type=int, default=50, help="sampler steps of the base image and of the stages' grid")
    add("--noising-steps", type=int, default=15, help="the last steps of the grid run per stage (released: 15)")
    add("--dwt-steps", type=int, default=5, help="structure-guided steps per stage (released: 5; 0: plain SDEdit)")
    add("--guidance-scale", type=float, default=None, help="base CFG scale (default SDXL 5.0, SD 7.5)")
    add("--stage-guidance-scale", type=float, default=None, help="CFG scale in the stages (default SDXL 10.0, SD 7.5)")
    add("--out", type=Path, default=Path("diffusehigh_outputs"), help="output folder (created)")
    add("--save-stages", action="store_true", help="also write the base image and every intermediate stage")
    add("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    add(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="weights dtype (auto: float16 on CUDA, float32 on CPU)",
    )
    add("--no-vae-tiling", action="store_true", help="do not tile the VAE in the stages (more memory)")
    add("--vae-slicing", action="store_true", help="decode/encode a batch one image at a time")
    add("--attention-slicing", action="store_true", help="compute attention in slices (less memory, slower)")
    add("--cpu-offload", action="store_true",
        help="keep each model on the CPU until it runs (model CPU offload; needs an accelerator)")  # fmt: skip


def settings_of(args: argparse.Namespace, pipe, seed: int, size: tuple[int, int], role: str) -> dict:
    """What one PNG's metadata records: every setting that made it, and the versions."""
    import diffusers

    return {
        "role": role, "size": list(size), "seed": seed, "prompt": args.prompt,
        "negative_prompt": args.negative_prompt, "model_dir": str(args.model_dir), "pipeline": type(pipe).__name__,
        "image": str(args.image) if args.image else None, "height": args.height, "width": args.width,
        "target": args.target, "target_width": args.target_width, "steps": args.steps,
        "noising_steps": args.noising_steps, "dwt_steps": args.dwt_steps, "guidance_scale": args.guidance_scale,
        "stage_guidance_scale": args.stage_guidance_scale, "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "vae_tiling": not args.no_vae_tiling, "diffusers": diffusers.__version__, "torch": torch.__version__,
    }  # fmt: skip


def save_png(image, path: Path, settings: dict) -> None:
    """A PIL image as PNG with ``settings`` (JSON) in the ``diffusehigh`` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(settings))
    image.save(path, pnginfo=info)


def handler(args: argparse.Namespace) -> int:
    """Check the folder and the image before loading anything (user errors: one line, exit 2), then generate."""
    require_path(args.model_dir, "--model-dir", kind="dir", hint=MODEL_DIR_HINT)  # a typo: said before diffusers loads
    from . import pipeline as pipeline_lib

    _, cls = pipeline_lib.check_model_dir(args.model_dir)
    guide = None
    if args.image is not None:
        if not args.image.is_file():
            raise PathNotFoundError(f"--image: {args.image} does not exist (a PNG/JPEG to upscale)")
        from PIL import Image

        try:
            guide = Image.open(args.image).convert("RGB")
        except OSError as err:
            raise UserError(f"--image: {args.image} is no image PIL can read ({err})") from err
    if args.num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {args.num_images}")
    device = runtime.select_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("float16" if device.type == "cuda" else "float32")
    with _quiet_loading():
        pipe = pipeline_lib.load_pipeline(args.model_dir, dtype, "cpu" if args.cpu_offload else device)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    if args.vae_slicing:
        pipe.vae.enable_slicing()
    if args.attention_slicing:
        pipe.enable_attention_slicing()
    kwargs = dict(
        prompt=args.prompt, height=args.height, width=args.width, target_height=args.target,
        target_width=args.target_width, num_inference_steps=args.steps, noising_steps=args.noising_steps,
        dwt_steps=args.dwt_steps, enable_vae_tiling=not args.no_vae_tiling, guidance_image=guide, output_type="pil",
    )  # fmt: skip
    negative = args.negative_prompt
    if negative is None and cls is pipeline_lib.DiffuseHighSDXLPipeline:
        negative = README_NEGATIVE_PROMPT
    kwargs["negative_prompt"] = negative
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    if args.stage_guidance_scale is not None:
        kwargs["diffusehigh_guidance_scale"] = args.stage_guidance_scale
    args.negative_prompt = negative
    args.out.mkdir(parents=True, exist_ok=True)
    unet_calls: list[int] = []
    for k in range(args.num_images):
        seed = args.seed + k
        generator = torch.Generator(device=device if device.type != "mps" else "cpu").manual_seed(seed)
        unet_calls.clear()
        hook = pipe.unet.register_forward_pre_hook(lambda *_: unet_calls.append(1))
        try:
            out = pipe(generator=generator, **kwargs)
        except ValueError as err:
            if unet_calls:  # the pipeline checks every argument before its first UNet call: this is a bug
                raise
            raise UserError(str(err)) from err  # a bad argument (e.g. a target that is no multiple of 8)
        finally:
            hook.remove()
        named = [("base", out.guidance_images[0])]
        named += [(f"stage{j}", stage[0]) for j, stage in enumerate(out.stage_images[:-1], start=1)]
        named = (named if args.save_stages else []) + [("final", out.images[0])]
        for role, image in named:
            width, height = image.size
            suffix = "" if role == "final" else f"_{role}"
            path = args.out / f"diffusehigh_seed{seed}_{width}x{height}{suffix}.png"
            save_png(image, path, settings_of(args, pipe, seed, (height, width), role))
            print(path)
    return 0


@contextlib.contextmanager
def _quiet_loading():
    """diffusers' loading progress bars and its 'requires_safety_checker' notice, silenced while loading."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        diffusers_logging.enable_progress_bar()
