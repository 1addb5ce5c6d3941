"""Configs and the three presets of the DiffuseHigh reproduction.

Every field carries help text (``python -m diffusehigh presets mini`` lists them). New fields must default to
the value that reproduces the results already recorded (see ../README.md, "Conventions").

Names follow the paper and the released pipeline (``DiffuseHighSDXLPipeline.__call__``): the released
defaults are in ``paper()``; ``StageConfig`` documents where the released code is quirky and what is done
instead (research notes ../shared/papers/diffusehigh.md, sections 2.9 and 2.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import param

MODEL_DIR_HINT = (
    "Pass --model-dir a local diffusers pipeline directory (e.g. stable-diffusion-xl-base-1.0 or "
    "stable-diffusion-v1-5: model_index.json, unet/, vae/, text_encoder*/, tokenizer*/, scheduler/); nothing is "
    "downloaded."
)
"""What every refusal of a model directory ends with (here, not in pipeline.py: ``generate`` checks the folder
before it imports diffusers)."""

SDXL_SIGMA_T281 = 0.7789
"""SDXL's Euler sigma at t=281, the first of the last 15 of 50 steps (alpha_bar 0.6224; notes 2.5, App. A)."""

README_NEGATIVE_PROMPT = "blurry, ugly, duplicate, poorly drawn, deformed, mosaic"
"""The negative prompt of every example in the official README."""


@dataclass(frozen=True)
class StageConfig:
    """One DiffuseHigh stage: upsample -> sharpen -> noise to sigma -> denoise with DWT structure guidance."""

    scale_factors: tuple[float, ...] = param(
        (2.0, 3.0, 4.0),
        "side-length factor of each progressive stage relative to the base resolution; each stage is guided by "
        "the previous stage's output (released: target_height/width [2048, 3072, 4096] from 1024; 2K README "
        "example: (1.5, 2.0))",
    )
    upsample_mode: Literal["bicubic", "bilinear"] = param(
        "bicubic",
        "pixel-space interpolation of the guide (released code: bicubic, align_corners=False; paper text and old "
        "code: bilinear)",
    )
    sharpening_alpha: float = param(
        1.0,
        "unsharp-mask strength alpha: x + alpha * (x - blur(x)); 0 disables sharpening (released "
        "sharpening_alpha=1.0; the README's `sharpness_factor` is not a parameter and was silently ignored)",
    )
    sharpening_kernel_size: int = param(3, "Gaussian blur kernel of the unsharp mask (released: 3)")
    sharpening_sigma: tuple[float, float] = param(
        (0.1, 2.0),
        "blur sigma drawn uniformly from (low, high) once per stage; equal ends fix it. Drawn from the run's "
        "seeded generator, not torch's global RNG as in the released code, so outputs follow from the seed",
    )
    noise_sigma: float = param(
        SDXL_SIGMA_T281,
        "noising level sigma_tau of the upsampled, encoded guide (z = z0 + sigma * eps; VP alpha_bar = "
        "1/(1+sigma^2)). 0.7789 = SDXL's Euler sigma at t=281, what the released noising_steps=15 of 50 gives; "
        "given as sigma so that other noise schedules get the same noise (DDPM-linear: t~215, not 281)",
    )
    stage_steps: int = param(
        15,
        "sampler steps per stage, from noise_sigma down to 0 (released noising_steps=15: the last 15 of the "
        "50-step Euler grid, t=281...1, the same at every stage)",
    )
    dwt_steps: int = param(
        5,
        "structure-guided steps: at each of the first dwt_steps stage steps the low-pass (LL) DWT subband of "
        "the predicted x0 is replaced by the guide's; 0 disables the guidance (= plain SDEdit); README: 5-7 work",
    )
    dwt_wave: str = param("db4", "wavelet of the DWT (PyWavelets name; released: 'db4')")
    dwt_level: int = param(1, "DWT decomposition levels J; the LL of the coarsest level is swapped (released: 1)")
    dwt_mode: str = param("symmetric", "DWT boundary extension (released: 'symmetric'; db4 J=1 maps N to (N+7)//2)")
    renoise: Literal["deterministic", "fresh"] = param(
        "deterministic",
        "how a step continues from the guided x0: deterministic Euler/DDIM(eta=0) update as in the released "
        "code, or re-noising with fresh noise to the next level as in the old DDIM research code",
    )
    diffusehigh_guidance_scale: float = param(
        10.0,
        "classifier-free guidance scale in the DiffuseHigh stages (released default 10.0, undocumented and "
        "different from the base scale); unused by unconditional models",
    )


@dataclass(frozen=True)
class BaseModelConfig:
    """The pretrained generator and how the base (native-resolution) image is sampled."""

    backbone: Literal["pixel_unet", "sdxl"] = param(
        "pixel_unet",
        "pixel_unet: a small diffusers UNet2DModel trained here (no autoencoder, so DWT guidance acts on x0 "
        "directly); sdxl: StableDiffusionXL loaded from sdxl_path, DWT on VAE-decoded x0 as in the paper",
    )
    resolution: int = param(32, "base (native/training) resolution in pixels; stages multiply it")
    sampler: Literal["ddim", "euler"] = param(
        "ddim", "base and stage sampler: ddim (eta=0) for the pixel model; euler = SDXL's EulerDiscreteScheduler"
    )
    num_inference_steps: int = param(50, "sampler steps for the base image and for direct high-res baselines")
    guidance_scale: float = param(5.0, "classifier-free guidance scale of the base image (released: 5.0)")
    negative_prompt: str = param(README_NEGATIVE_PROMPT, "negative prompt for text-conditioned backbones")
    clip_x0: bool = param(True, "clip predicted x0 to [-1, 1] at every step and after the LL swap (pixel model)")
    dtype: Literal["float32", "float16"] = param("float32", "weights/activations dtype (released SDXL: float16)")
    vae_tiling: bool = param(False, "tiled VAE encode/decode (the released pipeline always enables it)")
    block_out_channels: tuple[int, ...] = param(
        (16, 32, 64),
        "UNet2DModel channels per resolution level; plain DownBlock2D/UpBlock2D, no attention (attention more than "
        "doubles the CPU step time and attention-free UNets show the repetition failure more clearly)",
    )
    layers_per_block: int = param(1, "UNet2DModel ResNet layers per block")
    norm_num_groups: int = param(8, "UNet2DModel GroupNorm groups (must divide every channel count)")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = param("epsilon", "what the network predicts")
    num_train_timesteps: int = param(1000, "diffusion steps of the training noise schedule")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = param(
        "linear",
        "DDPM beta schedule (SDXL: scaled_linear; squaredcos_cap_v2: the cosine schedule of Nichol & Dhariwal 2021, "
        "which ignores beta_start/beta_end)",
    )
    beta_start: float = param(1e-4, "first beta of the schedule (SDXL: 0.00085)")
    beta_end: float = param(0.02, "last beta of the schedule (SDXL: 0.012)")


@dataclass(frozen=True)
class TrainConfig:
    """Training of the pixel-space base model (pixel_unet only; cached by config)."""

    steps: int = param(4000, "optimizer steps at the base resolution (0 = backbone is pretrained, e.g. SDXL)")
    batch_size: int = param(24, "images per step")
    micro_batches: int = param(
        2,
        "equal micro-batches per step, their gradients averaged in a fixed order; up to this many CPU worker "
        "processes share them (the weights do not depend on how many)",
    )
    lr: float = param(5e-4, "AdamW peak learning rate (linear warm-up, then cosine decay to 0)")
    warmup_steps: int = param(100, "linear learning-rate warm-up steps")
    ema_decay: float = param(0.999, "decay of the exponential moving average of the weights that is sampled from")
    hflip: bool = param(True, "random horizontal flips")
    seed: int = param(0, "training seed; one model is trained and shared by all sampling seeds")


@dataclass(frozen=True)
class DataConfig:
    """Procedural images that can be rendered natively at any resolution (notes 7.3)."""

    renderer: Literal["textured_disk", "none"] = param(
        "textured_disk",
        "textured_disk: one anti-aliased disk on a dark flat background with fixed-period stripes and grain, so "
        "object size scales with resolution but texture does not; none: no training/reference images (SDXL)",
    )
    num_train_images: int = param(6000, "training images rendered at the base resolution")
    num_reference_images: int = param(256, "real images rendered natively at each target resolution, for metrics")
    radius_range: tuple[float, float] = param((0.16, 0.26), "disk radius as a fraction of the image size")
    center_range: float = param(0.4, "disk centre uniform in the middle fraction of the image")
    stripe_period_px: float = param(4.0, "stripe period inside the disk, in pixels at every resolution")
    stripe_contrast: float = param(0.18, "stripe amplitude (+-) in [0, 1] intensity units")
    grain_sigma: float = param(0.06, "per-pixel Gaussian grain everywhere, in [0, 1] intensity units")
    seed: int = param(1234, "seed of the rendered training and reference sets")


@dataclass(frozen=True)
class MetricsConfig:
    """What is measured on the generated images."""

    count_smoothing_px: int = param(5, "box filter before object segmentation")
    count_threshold: float = param(0.35, "colour distance from the border-median background that marks object pixels")
    count_min_area_px: int = param(20, "smallest connected component counted as an object")
    highpass_sigma: float = param(1.5, "Gaussian sigma of the detail metric mean((x - G(x))^2)")
    band_edges: tuple[float, ...] = param(
        (0.045, 0.09, 0.18, 0.32),
        "radial frequency band edges (cycles/px) of the band-resolved detail table; the defaults put the data's "
        "4 px stripes (0.25) and their bicubic 2x/4x/8x enlargements (0.125, 0.0625, 0.031) in different bands, and "
        "grain/noise alone above 0.32",
    )
    stripe_band: tuple[float, float] = param(
        (0.18, 0.32),
        "radial band (cycles/px) of the stripe energy, the oriented excess around 1/data.stripe_period_px: the "
        "texture the real images have at every size and that grain or isotropic noise lacks",
    )
    timing_images: int = param(1, "images per timed batch for the cost claim (timed in the parent, workers idle)")
    timing_repeats: int = param(4, "interleaved repeats of the timed batches (the cost claim's unit)")
    kid_feature_steps: int = param(
        300, "training steps of the small local CNN whose features KID uses (0 = no KID); no Inception offline"
    )
    patch_size: int = param(32, "crop size for patch metrics (patch-KID here; 1024 crops for FID_c/KID_c/IS_c)")
    fid_resize: int = param(
        299,
        "evaluation size of the paper preset's FID_r/KID_r/IS_r: images are resized to it (PIL bicubic; references: "
        "shorter side, then a centre crop); crops are resized to it too before the Inception network (its input size)",
    )
    crops_per_image: int = param(
        1,
        "paper preset: random patch_size crops per image (generated and reference) for FID_c/KID_c/IS_c; positions "
        "drawn from the image's index, so they do not depend on the process that made the image (AccDiffusion uses "
        "10; DemoFusion's count is not in the research notes)",
    )
    kid_subsets: int = param(
        100, "paper preset's KID: random subsets averaged (torchmetrics' and torch-fidelity's default)"
    )
    kid_subset_size: int = param(
        1000, "paper preset's KID: images per subset (library default), lowered to the smaller set size when fewer"
    )
    is_splits: int = param(
        10, "paper preset's Inception Score: splits of the images (library default, after Salimans et al.)"
    )


@dataclass(frozen=True)
class AblationConfig:
    """Extra conditions; each grid varies one StageConfig field around its default."""

    baselines: tuple[Literal["direct", "bicubic", "sdedit"], ...] = param(
        ("direct", "bicubic"),
        "direct: sample from noise at the target resolution; bicubic: interpolate the base image only; sdedit: "
        "the same stages without DWT guidance (always run by the pixel presets; paper preset only when listed, "
        "as direct: both cost a full SDXL run per image, direct at the target size)",
    )
    scale_factors: tuple[float, ...] = param(
        (2.0,), "stages the one-factor grids below run at (the full default stages are always run)"
    )
    dwt_steps: tuple[int, ...] = param((0, 3, 5, 7, 15), "values of stages.dwt_steps to compare (0 = SDEdit)")
    sharpening_alpha: tuple[float, ...] = param((0.0, 0.5, 1.0, 2.0), "values of stages.sharpening_alpha")
    noise_sigma: tuple[float, ...] = param(
        (SDXL_SIGMA_T281, 1.5, 3.0), "values of stages.noise_sigma, each with and without DWT guidance"
    )
    dwt_wave: tuple[str, ...] = param(("db4", "haar"), "values of stages.dwt_wave")
    dwt_level: tuple[int, ...] = param((1, 2), "values of stages.dwt_level")
    one_jump: bool = param(True, "also go to the last scale factor in a single stage (progressive vs one jump)")
    jump_factors: tuple[float, ...] = param(
        (),
        "the progressive-vs-one-jump test's own path (e.g. (2, 4, 8): progressive through these factors vs one jump "
        "to the last); empty = the main stages (stages.scale_factors); its prefix shared with the main stages is not "
        "sampled twice",
    )
    jump_samples: int = param(
        0, "images per seed that the jump path's extra stages run on (the first ones; 0 = num_samples)"
    )
    direct_samples: int = param(
        0,
        "images per seed sampled directly at each target size (0 = num_samples); direct samples do not derive from "
        "the base samples, so claims compare them unpaired (Welch)",
    )


@dataclass(frozen=True)
class DiffuseHighConfig:
    seeds: tuple[int, ...] = param((0, 1), "sampling seeds; tables report mean +- std over them")
    num_samples: int = param(32, "images generated per seed and condition")
    sdxl_path: str = param(
        "", "local diffusers directory of stable-diffusion-xl-base-1.0 (paper preset; loaded offline)"
    )
    prompts_path: str = param(
        "",
        "text file, one prompt per line (paper preset; cycled up to num_samples images, a new seed each); "
        "empty = the official demo prompt",
    )
    inception_path: str = param(
        "",
        "paper preset: the FID Inception-v3 weights file (torch-fidelity's weights-inception-2015-12-05-6726825d.pth, "
        "the TensorFlow FID graph converted) or a directory holding one .pth; enables IS, and FID/KID with "
        "reference_images_path; needs the [eval] extra",
    )
    clip_path: str = param(
        "",
        "paper preset: a CLIP model in transformers layout (config.json, weights, tokenizer and preprocessor files) "
        "for the CLIP score of each image with its prompt; needs the [eval] extra",
    )
    reference_images_path: str = param(
        "",
        "paper preset: a directory of real images (png/jpg/webp; e.g. the LAION images of the prompts) that FID and "
        "KID compare with; needs inception_path",
    )
    save_images: int = param(
        0,
        "paper preset: write every stage's output (e.g. 2048^2, 3072^2 and 4096^2) and the base image of the first N "
        "prompts as PNG under <results>/diffusehigh/<preset>/images/ (large files; not for committing)",
    )
    model: BaseModelConfig = param(BaseModelConfig(), "the pretrained generator and base-image sampling")
    stages: StageConfig = param(StageConfig(), "the DiffuseHigh stages (released defaults)")
    train: TrainConfig = param(TrainConfig(), "training of the pixel-space base model")
    data: DataConfig = param(DataConfig(), "procedural training and reference images")
    metrics: MetricsConfig = param(MetricsConfig(), "metrics")
    ablation: AblationConfig = param(AblationConfig(), "baselines and ablation grids")


def smoke() -> DiffuseHighConfig:
    """Seconds on a CPU: a tiny pixel UNet, a few steps, one 2x stage; checks the plumbing, not the claims.

    Command: ``make reproduce-diffusehigh PRESET=smoke``. Hardware: any CPU. Time: ~10 s measured (1 thread,
    shared 2-core machine), training included. Targets: nothing in the paper; used by the tests.
    """
    return DiffuseHighConfig(
        seeds=(0,),
        num_samples=4,
        model=BaseModelConfig(resolution=16, num_inference_steps=10, block_out_channels=(8, 16), norm_num_groups=4),
        stages=StageConfig(scale_factors=(2.0,), stage_steps=5, dwt_steps=2),
        train=TrainConfig(steps=30, batch_size=8, warmup_steps=5),
        data=DataConfig(num_train_images=64, num_reference_images=8),
        metrics=MetricsConfig(kid_feature_steps=20, patch_size=16, timing_repeats=2),
        ablation=AblationConfig(
            scale_factors=(2.0,),
            dwt_steps=(0,),
            sharpening_alpha=(0.0, 1.0),
            noise_sigma=(),
            dwt_wave=(),
            dwt_level=(),
            one_jump=False,
            jump_factors=(2.0, 4.0),
            jump_samples=2,
            direct_samples=2,
        ),
    )


def mini() -> DiffuseHighConfig:
    """The default: a pixel UNet trained at 32x32 on textured disks, taken to 2x, 4x and 8x by DiffuseHigh.

    Command: ``make reproduce-diffusehigh``. Hardware: 2-core CPU. Time: **27.1 min measured** from an empty cache
    (1,626 s, commit 7ec66d3, AMD EPYC, nothing else running; budget 30): training the 0.64M-parameter UNet for
    4,000 steps in two single-thread worker processes 19.7 min, sampling and metrics of the two seeds in two worker
    processes 6.3 min (before: 55.5 min, 5,000 steps on 2 threads, a mid-block attention at every size). The
    checkpoint that run trained is committed (checkpoints/mini_unet.safetensors), so a fresh clone skips the
    training (budget 10 min; every timed run: results/README.md, "Run time against the budgets").
    ``python -m diffusehigh train --preset mini`` trains the same weights.
    Targets: the paper's qualitative claims, not its tables (which could not be read): direct sampling above the
    training resolution repeats objects and DiffuseHigh does not; the DWT guidance keeps the low-resolution
    structure better than plain noising-denoising; it adds detail (sharp edges, fine texture) that interpolation
    lacks; sharpening; progressive vs one jump at 8x; cost vs direct high-resolution sampling. Stages 32 -> 64 ->
    128, 2 sampling seeds x 24 images (direct sampling 8 per seed; the 8x jump test 8 per seed), stage settings as
    released, the noise level matched in sigma. The base model is v-prediction on the cosine schedule: the
    epsilon/linear model trained before (4,000 steps) gave grey backgrounds (border mean 0.46 vs 0.13 real), which
    v-prediction fixes (0.14 after 1,500 steps in a probe); neither renders the 4 px stripes at this training length,
    which the quality gate reports (the texture claims are then "not testable here"; a longer training:
    ``--set train.steps=40000``, untested).
    """
    return DiffuseHighConfig(
        num_samples=24,
        model=BaseModelConfig(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2"),
        stages=StageConfig(scale_factors=(2.0, 4.0)),
        train=TrainConfig(steps=4000),
        metrics=MetricsConfig(timing_repeats=8),  # 4 left the cost claim's interval spanning its margin on a re-run
        ablation=AblationConfig(direct_samples=8, jump_factors=(2.0, 4.0, 8.0), jump_samples=8),
    )


def paper() -> DiffuseHighConfig:
    """The released SDXL pipeline's defaults: 1024^2 base, stages 2048 -> 3072 -> 4096, on a GPU.

    Command: ``make reproduce-diffusehigh PRESET=paper ARGS="--set sdxl_path=/path"`` where the directory
    holds stable-diffusion-xl-base-1.0 in diffusers layout. Hardware: one 80 GB GPU (whole-latent UNet at
    512x512 latents; peak memory not measured). Time: a third party measured ~325 s per 4096^2 image
    (ScaleDiff, arXiv:2510.25818), so ~90 GPU-hours for 1,000 prompts; fewer with --set num_samples=N.
    Targets: the paper's quantitative SDXL comparison at 4096^2 (its table could not be read, so there is no
    paper number to compare with; see paper.py): the DemoFusion-style FID/KID/IS on resized images and on crops and
    the CLIP score (diffusehigh.evaluation) with inception_path, clip_path and reference_images_path, and always the
    time per image, low-resolution consistency and detail. 2K instead: --set stages.scale_factors='(1.5, 2.0)'.
    """
    return DiffuseHighConfig(
        seeds=(0,),
        num_samples=1000,
        save_images=4,
        model=BaseModelConfig(
            backbone="sdxl",
            resolution=1024,
            sampler="euler",
            dtype="float16",
            vae_tiling=True,
            clip_x0=False,
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
        ),
        stages=StageConfig(),
        train=TrainConfig(steps=0),
        data=DataConfig(renderer="none", num_train_images=0, num_reference_images=0),
        metrics=MetricsConfig(kid_feature_steps=0, patch_size=1024),
        ablation=AblationConfig(
            baselines=("bicubic",),
            dwt_steps=(),
            sharpening_alpha=(),
            noise_sigma=(),
            dwt_wave=(),
            dwt_level=(),
            one_jump=False,
        ),
    )


PRESETS = {"smoke": smoke, "mini": mini, "paper": paper}
