"""The DiffuseHigh experiment for each preset: runs it, returns the results record (see common.cli).

``smoke``/``mini``: a pixel UNet trained at the base resolution on procedural disks (or the committed checkpoint),
then every method at every target size, metrics against natively rendered references, claims from stated rules.
``paper``: the SDXL pipeline from a local directory (:func:`run_sdxl`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import math
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common import distributed, parallel, runtime
from common.cli import RunContext
from common.config import ConfigError, config_hash, get_preset, override, to_dict
from common.errors import UserError
from common.results import NOT_TESTABLE, RunRecord, claims_table, markdown_table, render_record
from common.stats import RULES_MARKDOWN

from . import claims as claims_lib
from . import config as config_lib
from . import core, evaluation, metrics
from . import data as data_lib
from . import train as train_lib
from .claims import (
    BASE,
    BICUBIC,
    DH,
    DIRECT,
    M_AREA,
    M_BORDER,
    M_EDGE,
    M_HF,
    M_KID,
    M_KIDC,
    M_OBJ,
    M_PSNR,
    M_SINGLE,
    M_STRIPE,
    M_TIME,
    ONE_JUMP,
    REAL,
    SDEDIT,
)
from .config import DiffuseHighConfig, StageConfig
from .models import PixelDenoiser, build_scheduler, build_unet, count_params

log = logging.getLogger(__name__)

# Condition and metric names live with the claims that read them (diffusehigh.claims).
M_TIME_NOTE = "timed in the main process, no workers running"
METRIC_ORDER = (M_OBJ, M_SINGLE, M_AREA, M_PSNR, M_EDGE, M_HF, M_STRIPE, M_BORDER, M_KID, M_KIDC, M_TIME)
GRID_FILE = "figures/sample_grid.png"
GRID_DPI = 80
"""Resolution of the sample grid (keeps the committed PNG small)."""
GRID_ROWS = [BASE, BICUBIC, DIRECT, SDEDIT, DH, ONE_JUMP, REAL]
NOISE_FILE = "figures/noise_level_ablation.png"
JUMP_REFERENCE_IMAGES = 64
"""Real references rendered at a size only the jump test uses (e.g. 256x256; KID is not computed there)."""
TIMING_SEED = 90_000
"""Seed of the timed batches (independent of the sampling seeds; the timed images are not measured)."""


def main_table(size: int, factor: float) -> str:
    return f"{factor:g}x ({size}x{size}): repetition, structure, detail, cost"


def ablation_table(size: int, factor: float) -> str:
    return f"Ablations at {factor:g}x ({size}x{size})"


def jump_table(size: int, factor: float) -> str:
    return f"Progressive vs one jump at {factor:g}x ({size}x{size})"


def band_table(size: int, factor: float) -> str:
    return f"Detail by frequency band at {factor:g}x ({size}x{size}): variance per radial band [x1e-3]"


def band_names(edges: tuple[float, ...]) -> list[str]:
    """Column names of the band table: ``"< 0.045"``, ``"0.045-0.09"``, ..., ``"> 0.32"`` (cycles/px)."""
    bounds = [f"{e:g}" for e in edges]
    return [f"< {bounds[0]}", *[f"{a}-{b}" for a, b in itertools.pairwise(bounds)], f"> {bounds[-1]}"]


def progressive_name(path: tuple[float, ...]) -> str:
    return "DiffuseHigh, progressive " + " -> ".join(f"{f:g}x" for f in path)


def one_jump_name(factor: float) -> str:
    return f"DiffuseHigh, one jump to {factor:g}x"


# ----------------------------------------------------------------------------------------------------
# Conditions


@dataclass(frozen=True)
class Variant:
    """One generation recipe: direct sampling, bicubic, or DiffuseHigh through the stage ``path``; on the first
    ``images`` images of each seed's batch (0: all)."""

    kind: str  # "direct" | "bicubic" | "diffusehigh"
    path: tuple[float, ...] = ()
    stage: StageConfig | None = None
    images: int = 0

    def key(self) -> str:
        return runtime.key_hash(
            [self.kind, self.path, None if self.stage is None else to_dict(self.stage), self.images]
        )


@dataclass
class Plan:
    """The conditions of every table: ``tables[kind][factor][row name] = variant`` (kind: main, ablation, jump)."""

    tables: dict[str, dict[float, dict[str, Variant]]]
    jump: tuple[float, str, str] | None
    """(factor, progressive row, one-jump row) of the progressive-vs-one-jump test, if any."""

    @property
    def main(self) -> dict[float, dict[str, Variant]]:
        return self.tables["main"]

    @property
    def ablation(self) -> dict[float, dict[str, Variant]]:
        return self.tables["ablation"]

    def factors(self) -> list[float]:
        return sorted({f for table in self.tables.values() for f in table})

    def conditions(self) -> list[tuple[float, str, Variant]]:
        """Every (factor, row, variant) once (a row in two tables is one condition)."""
        seen, out = set(), []
        for table in self.tables.values():
            for f, conds in table.items():
                for name, v in conds.items():
                    if (f, name) not in seen:
                        seen.add((f, name))
                        out.append((f, name, v))
        return out

    def variants(self) -> dict[str, Variant]:
        out: dict[str, Variant] = {}
        for _, _, v in self.conditions():
            out.setdefault(v.key(), v)
        return out


def plan(cfg: DiffuseHighConfig) -> Plan:
    """The conditions of the main tables (per target factor), the ablation tables and the jump test."""
    s, a = cfg.stages, cfg.ablation
    path = tuple(s.scale_factors)
    main: dict[float, dict[str, Variant]] = {}
    for f in path:
        conds = {}
        if "direct" in a.baselines:
            conds[DIRECT] = Variant("direct", (f,), images=a.direct_samples)
        if "bicubic" in a.baselines:
            conds[BICUBIC] = Variant("bicubic", (f,))
        conds[SDEDIT] = Variant("diffusehigh", path, replace(s, dwt_steps=0))
        conds[DH] = Variant("diffusehigh", path, s)
        if a.one_jump and len(path) > 1 and f == path[-1]:
            conds[ONE_JUMP] = Variant("diffusehigh", (f,), s)
        main[f] = conds
    abl: dict[float, dict[str, Variant]] = {}
    for f in a.scale_factors:
        conds = {}
        for v in a.dwt_steps:
            conds[f"dwt_steps={v}"] = Variant("diffusehigh", (f,), replace(s, dwt_steps=v))
        for v in a.sharpening_alpha:
            conds[f"sharpening alpha={v:g}"] = Variant("diffusehigh", (f,), replace(s, sharpening_alpha=v))
        for v in a.noise_sigma:
            for d in (s.dwt_steps, 0):
                conds[f"noise sigma={v:.2f}, dwt_steps={d}"] = Variant(
                    "diffusehigh", (f,), replace(s, noise_sigma=v, dwt_steps=d)
                )
        for v in a.dwt_wave:
            conds[f"wavelet {v}"] = Variant("diffusehigh", (f,), replace(s, dwt_wave=v))
        for v in a.dwt_level:
            conds[f"DWT level {v}"] = Variant("diffusehigh", (f,), replace(s, dwt_level=v))
        abl[f] = conds
    tables = {"main": main, "ablation": abl}
    jump = None
    if a.jump_factors and len(a.jump_factors) > 1:
        jpath, f = tuple(a.jump_factors), a.jump_factors[-1]
        prog, one = progressive_name(jpath), one_jump_name(f)
        tables["jump"] = {f: {BICUBIC: Variant("bicubic", (f,), images=a.jump_samples),
                              prog: Variant("diffusehigh", jpath, s, images=a.jump_samples),
                              one: Variant("diffusehigh", (f,), s, images=a.jump_samples)}}  # fmt: skip
        jump = (f, prog, one)
    elif ONE_JUMP in main.get(path[-1], {}):
        jump = (path[-1], DH, ONE_JUMP)
    return Plan(tables, jump)


# ----------------------------------------------------------------------------------------------------
# The pixel-model experiment


class PixelExperiment:
    """Generates every variant for one seed (the base samples, the stages, the baselines)."""

    def __init__(self, cfg: DiffuseHighConfig, unet, device: torch.device):
        self.cfg, self.device = cfg, device
        alphas = build_scheduler(cfg.model).alphas_cumprod
        self.alphas = alphas
        self.denoise = PixelDenoiser(unet, alphas.to(device), cfg.model.prediction_type, cfg.model.clip_x0)
        self.base_levels = core.ddim_levels(alphas, cfg.model.num_inference_steps)
        self.res = cfg.model.resolution
        self.memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def size(self, factor: float) -> tuple[int, int]:
        return core.stage_sizes((self.res, self.res), (factor,))[0]

    def base(self, seed: int, n: int | None = None) -> torch.Tensor:
        n = self.cfg.num_samples if n is None else n
        g = runtime.generator(seed)
        x = core.sample(self.denoise, (n, 3, self.res, self.res), self.base_levels, g, self.device)
        return x.clamp(-1, 1)

    def run(self, variant: Variant, base: torch.Tensor, seed: int) -> dict[float, torch.Tensor]:
        """Images in [-1, 1] at every factor of the variant's path.

        A DiffuseHigh stage already computed for this seed (the same stage settings, path prefix and batch) is taken
        from the memo with the generator state after it, so a shared prefix (the 2x stage of the 4x progressive run,
        the main stages of the jump path) is sampled once; a variant on fewer ``images`` runs its first stage that
        is not in the memo on the first ``images`` images of the batch.
        """
        g = runtime.generator(seed + 10_000)  # the same noise and sharpening draws for every DiffuseHigh variant
        k = variant.images or len(base)
        if variant.kind == "direct":
            (f,) = variant.path
            h, w = self.size(f)
            return {f: core.sample(self.denoise, (k, 3, h, w), self.base_levels, g, self.device).clamp(-1, 1)}
        if variant.kind == "bicubic":
            (f,) = variant.path
            return {f: core.upsample(base[:k], self.size(f), "bicubic").clamp(-1, 1)}
        stage = variant.stage
        levels = core.levels_from_sigma(self.alphas, stage.noise_sigma, stage.stage_steps)
        out, current = {}, base
        stage_key = runtime.key_hash(to_dict(stage))
        for i, f in enumerate(variant.path):
            memo_key = (seed, stage_key, variant.path[: i + 1], len(current))
            if memo_key not in self.memo and len(current) > k:
                current = current[:k]
                memo_key = (seed, stage_key, variant.path[: i + 1], k)
            if memo_key in self.memo:
                current, state = self.memo[memo_key]
                g.set_state(state)
            else:
                current, _ = core.diffusehigh_stage(
                    current, self.size(f), self.denoise, levels, stage, g, clip_range=(-1.0, 1.0)
                )
                current = current.clamp(-1, 1)
                self.memo[memo_key] = (current, g.get_state())
            out[f] = current[:k]
        return out


def sampling_phase(variant: Variant) -> str:
    """The run-time phase a variant's sampling is charged to: the stock sampler at the target size, DiffuseHigh
    with DWT guidance (main rows and ablations), or the baselines (bicubic, and every stage run without DWT
    guidance: SDEdit and the ablations that equal it)."""
    if variant.kind == "direct":
        return "sampling: direct"
    if variant.kind == "bicubic" or variant.stage.dwt_steps == 0:
        return "sampling: baselines"
    return "sampling: DiffuseHigh"


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


class Measurer:
    """The per-image metrics of a batch at one target factor (and KID per batch against the references)."""

    def __init__(self, cfg: DiffuseHighConfig, net_state: dict | None, ref_feats: dict[float, tuple] | None):
        self.mt = cfg.metrics
        self.net = None
        if net_state is not None:
            self.net = metrics.FeatureNet()
            self.net.load_state_dict(net_state)
        self.ref_feats = ref_feats or {}
        self.band_cols = band_names(cfg.metrics.band_edges)

    def features(self, images01: torch.Tensor, crop_seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.net is None:
            return None
        size = min(self.mt.patch_size, images01.shape[-1])
        crops = metrics.random_crops(images01, size, 4, crop_seed)
        return metrics.features(self.net, images01), metrics.features(self.net, crops)

    def __call__(self, images01: torch.Tensor, factor: float, lr01: torch.Tensor | None, seed: int):
        """(per-image values by metric, per-batch KID by metric)."""
        mt = self.mt
        counts, area = metrics.count_objects(images01, mt)
        out = {M_OBJ: counts, M_SINGLE: 100.0 * (counts == 1), M_AREA: area,
               M_HF: 1e3 * metrics.highpass_energy(images01, mt.highpass_sigma),
               M_STRIPE: 1e3 * metrics.stripe_energy(images01, mt.stripe_band),
               M_BORDER: metrics.border_mean(images01), M_EDGE: metrics.edge_width(images01, mt)}  # fmt: skip
        bands = 1e3 * metrics.band_energy(images01, mt.band_edges)
        out |= {name: bands[:, i] for i, name in enumerate(self.band_cols)}
        if lr01 is not None:
            out[M_PSNR] = metrics.lr_psnr(images01, lr01[: len(images01)])
        kid = {}
        if factor in self.ref_feats and len(images01) >= 2:
            f = self.features(images01, 1000 + seed)
            if f is not None:
                ref = self.ref_feats[factor]
                kid = {M_KID: 1e3 * metrics.kid(f[0], ref[0]), M_KIDC: 1e3 * metrics.kid(f[1], ref[1])}
        return out, kid


@dataclass
class SeedResult:
    """What one seed's job returns: per-image values and KID by condition, the grid images, its phase times."""

    seed: int
    values: dict[tuple[float, str], dict[str, np.ndarray]]
    kid: dict[tuple[float, str], dict[str, float]]
    grid: dict[str, torch.Tensor]
    phases: dict[str, float]
    denoiser_calls: int


def seed_job(
    cfg: DiffuseHighConfig,
    unet_state: dict[str, torch.Tensor],
    seed: int,
    net_state: dict | None,
    ref_feats: dict[float, tuple] | None,
    device: str,
    grid_images: int,
) -> SeedResult:
    """Everything one sampling seed needs: its base samples, every variant, and their metrics (a worker job of
    :func:`common.parallel.map_jobs`: it depends on nothing but its arguments and seeds its own generators)."""
    timer = runtime.PhaseTimer()
    dev = torch.device(device)
    unet = build_unet(cfg.model)
    unet.load_state_dict(unet_state)
    exp = PixelExperiment(cfg, unet.to(dev).eval(), dev)
    measure = Measurer(cfg, net_state, ref_feats)
    p = plan(cfg)
    with timer.phase("sampling: base"):
        base = exp.base(seed)
    lr01 = _to01(base)
    values, kid, grid = {}, {}, {}
    with timer.phase("metrics"):
        values[(1.0, BASE)], kid[(1.0, BASE)] = measure(lr01, 1.0, None, seed)
    by_variant: dict[str, list[tuple[float, str]]] = {}
    for f, name, v in p.conditions():
        by_variant.setdefault(v.key(), []).append((f, name))
    top = max(p.main)
    for vkey, variant in p.variants().items():
        with timer.phase(sampling_phase(variant)):
            images = {f: _to01(x) for f, x in exp.run(variant, base, seed).items()}
        with timer.phase("metrics"):
            for f, name in by_variant[vkey]:
                lr_ref = None if variant.kind == "direct" else lr01
                values[(f, name)], kid[(f, name)] = measure(images[f], f, lr_ref, seed)
                if grid_images and f == top and name in p.main[top]:
                    grid[name] = images[f][:grid_images]
    if grid_images:
        grid[BASE] = lr01[:grid_images]
    return SeedResult(seed, values, kid, grid, timer.breakdown(), exp.denoise.calls)


def time_methods(cfg: DiffuseHighConfig, exp: PixelExperiment, top: float) -> dict:
    """Seconds per image of the base samples, the DiffuseHigh stages up to ``top`` and direct sampling at ``top``,
    timed in this process (no workers running) on ``metrics.timing_images`` images, ``timing_repeats`` times,
    interleaved (base, stages, direct in every repeat), after one untimed warm-up call at every size."""
    mt, s = cfg.metrics, cfg.stages
    n, dev = mt.timing_images, exp.device
    path = tuple(f for f in s.scale_factors if f <= top)
    levels = core.levels_from_sigma(exp.alphas, s.noise_sigma, s.stage_steps)
    sizes = [(exp.res, exp.res), *[exp.size(f) for f in path]]

    def now() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    for h, w in sizes:  # warm-up: allocator and kernel selection at every size
        exp.denoise(torch.zeros(n, 3, h, w, device=dev), float(levels.sigmas[0]), int(levels.timesteps[0]))
    out = {"base": [], "diffusehigh": [], "direct": []}
    for r in range(mt.timing_repeats):
        g = runtime.generator(TIMING_SEED + r)
        t0 = now()
        base = exp.base(TIMING_SEED + r, n)
        t1 = now()
        current = base
        for f in path:
            current, _ = core.diffusehigh_stage(current, exp.size(f), exp.denoise, levels, s, g, clip_range=(-1.0, 1.0))
            current = current.clamp(-1, 1)
        t2 = now()
        core.sample(exp.denoise, (n, 3, *exp.size(top)), exp.base_levels, g, dev)
        t3 = now()
        for name, seconds in (("base", t1 - t0), ("diffusehigh", t2 - t1), ("direct", t3 - t2)):
            out[name].append(seconds / n)
    steps = cfg.model.num_inference_steps
    px_base = steps * exp.res**2
    px_dh = px_base + sum(len(levels) * h * w for h, w in sizes[1:])
    out |= {"images": n, "threads": torch.get_num_threads(),
            "evaluated_pixels": {"diffusehigh": px_dh, "direct": steps * sizes[-1][0] * sizes[-1][1]}}  # fmt: skip
    return out


SDXL_VAE_FACTOR = 8
"""SDXL's VAE downsampling factor: its base and stage sizes must be multiples of it."""


def _stage_names(prefix: str = "stages.", **overrides: str) -> dict[str, str]:
    names = {f.name: f"{prefix}{f.name}" for f in dataclasses.fields(StageConfig)}
    return names | overrides


def _check_evaluation_paths(cfg: DiffuseHighConfig) -> None:
    """The paper preset's metric networks and references: every path there (the [eval] extra is checked after every
    setting, so that a wrong path or value is named on a machine that lacks the extra too)."""
    if cfg.reference_images_path and not cfg.inception_path:
        raise ConfigError("reference_images_path needs inception_path: FID and KID compare Inception features")
    if not (cfg.inception_path or cfg.clip_path):
        return
    if cfg.inception_path:
        evaluation.inception_weights_file(cfg.inception_path)
    if cfg.clip_path:
        evaluation.clip_dir(cfg.clip_path)
    if cfg.reference_images_path:
        evaluation.reference_files(cfg.reference_images_path)


def validate_config(cfg: DiffuseHighConfig) -> None:
    """Check ``cfg`` before anything expensive (training, loading SDXL, sampling): the paper preset's paths, every
    stage setting and ablation value, and that the stage sizes and step counts fit the model. A bad value raises
    :class:`~common.config.ConfigError` (a user error: the CLI prints one line, exit status 2) naming the config
    key; a missing path a :class:`~common.errors.PathNotFoundError`. Anything else (a ValueError from the code
    these checks call) is a bug and keeps its traceback."""
    m, s = cfg.model, cfg.stages
    if m.backbone == "sdxl":  # paths first: the most common mistake, and nothing below needs the weights
        from . import pipeline as pipeline_lib

        pipeline_lib.check_sdxl_dir(cfg.sdxl_path)
        pipeline_lib.read_prompts(cfg.prompts_path)
        _check_evaluation_paths(cfg)
    error = ConfigError  # every check below raises it directly: a ValueError from anything else is a bug
    if not cfg.seeds or any(isinstance(v, bool) or not isinstance(v, int) for v in cfg.seeds):
        raise error(f"seeds must be a non-empty tuple of integers, got {cfg.seeds!r}")
    core.check_int(cfg.num_samples, "num_samples", 1, error=error)
    core.check_int(cfg.save_images, "save_images", 0, error=error)
    core.check_int(m.resolution, "model.resolution", 4, error=error)
    core.check_int(m.num_train_timesteps, "model.num_train_timesteps", 1, error=error)
    core.check_int(m.num_inference_steps, "model.num_inference_steps", 1, m.num_train_timesteps, error=error)
    core.check_real(m.guidance_scale, "model.guidance_scale", 0.0, error=error)
    core.validate_stage_config(s, names=_stage_names(), error=error)
    grids = {"dwt_steps": cfg.ablation.dwt_steps, "sharpening_alpha": cfg.ablation.sharpening_alpha,
             "noise_sigma": cfg.ablation.noise_sigma, "dwt_wave": cfg.ablation.dwt_wave,
             "dwt_level": cfg.ablation.dwt_level}  # fmt: skip
    for field, values in grids.items():
        for v in values:
            core.validate_stage_config(
                replace(s, **{field: v}), _stage_names(**{field: f"ablation.{field}"}), error=error
            )
    for i, f in enumerate(cfg.ablation.scale_factors):
        core.check_real(f, f"ablation.scale_factors[{i}]", 0.0, strict=True, error=error)
    a, mt = cfg.ablation, cfg.metrics
    for name in ("jump_samples", "direct_samples"):
        core.check_int(getattr(a, name), f"ablation.{name}", 0, cfg.num_samples, error=error)
    for i, f in enumerate(a.jump_factors):
        core.check_real(f, f"ablation.jump_factors[{i}]", 0.0, strict=True, error=error)
    core.check_int(mt.timing_images, "metrics.timing_images", 1, error=error)
    core.check_int(mt.fid_resize, "metrics.fid_resize", 1, error=error)
    core.check_int(mt.crops_per_image, "metrics.crops_per_image", 0, error=error)
    core.check_int(mt.kid_subsets, "metrics.kid_subsets", 1, error=error)
    core.check_int(mt.kid_subset_size, "metrics.kid_subset_size", 2, error=error)
    core.check_int(mt.is_splits, "metrics.is_splits", 1, error=error)
    core.check_int(mt.timing_repeats, "metrics.timing_repeats", 1, error=error)
    edges = tuple(mt.band_edges)
    if not edges or edges[0] <= 0 or any(b <= e for e, b in itertools.pairwise(edges)):
        raise error(f"metrics.band_edges must be positive and increasing, got {edges}")
    if len(mt.stripe_band) != 2 or not 0 < mt.stripe_band[0] < mt.stripe_band[1]:
        raise error(f"metrics.stripe_band must be (low, high) with 0 < low < high, got {mt.stripe_band}")
    multiple = SDXL_VAE_FACTOR if m.backbone == "sdxl" else 1
    base = (m.resolution, m.resolution)
    if m.backbone == "sdxl" and m.resolution % multiple:
        raise error(f"model.resolution must be a multiple of SDXL's VAE factor {multiple}, got {m.resolution}")
    # The factors were checked above, so stage_sizes cannot refuse them (a ValueError from it would be a bug).
    core.check_stage_sizes(base, core.stage_sizes(base, s.scale_factors), multiple, "stages.scale_factors", error=error)
    for f in cfg.ablation.scale_factors:  # each ablation runs one stage from the base
        core.check_stage_sizes(base, core.stage_sizes(base, (f,)), multiple, "ablation.scale_factors", error=error)
    if a.jump_factors:
        if any(b <= f for f, b in itertools.pairwise(a.jump_factors)):
            raise error(f"ablation.jump_factors must increase, got {a.jump_factors}")
        core.check_stage_sizes(base, core.stage_sizes(base, a.jump_factors), multiple, "ablation.jump_factors",
                               error=error)  # fmt: skip
    if m.backbone == "sdxl":
        final = core.stage_sizes(base, s.scale_factors)[-1]
        if cfg.inception_path and mt.crops_per_image and mt.patch_size > min(final):
            raise error(f"metrics.patch_size ({mt.patch_size}: the crops of FID_c/KID_c/IS_c) must not exceed the "
                        f"final stage {final}; or set metrics.crops_per_image=0")  # fmt: skip
        if s.stage_steps > m.num_inference_steps:
            raise error(
                f"stages.stage_steps ({s.stage_steps}: the last steps of the Euler grid, released noising_steps) "
                f"must be <= model.num_inference_steps ({m.num_inference_steps})"
            )
        if cfg.inception_path or cfg.clip_path:  # after every setting: a wrong value is named without the extra too
            evaluation.require_extra()
        return
    if cfg.data.renderer != "textured_disk":
        raise error("data.renderer must be 'textured_disk' for the pixel_unet backbone (its training data)")
    core.check_int(m.norm_num_groups, "model.norm_num_groups", 1, error=error)
    if any(c % m.norm_num_groups for c in m.block_out_channels):
        raise error(f"model.norm_num_groups={m.norm_num_groups} must divide every channel of "
                    f"model.block_out_channels {m.block_out_channels}")  # fmt: skip
    for key in ("beta_start", "beta_end"):
        if core.check_real(getattr(m, key), f"model.{key}", 0.0, strict=True, error=error) >= 1:
            raise error(f"model.{key} must be in (0, 1), got {getattr(m, key)}")
    alphas = build_scheduler(m).alphas_cumprod
    for sigma in (s.noise_sigma, *cfg.ablation.noise_sigma):
        # The one library call whose ValueError means a bad value: stage_steps that do not fit below the timestep
        # of this sigma (steps >= 1 and sigma > 0 were checked above).
        try:
            core.levels_from_sigma(alphas, sigma, s.stage_steps)
        except ValueError as cause:
            raise error(f"stages.stage_steps / noise_sigma: {cause}") from cause


def _phase(ctx: RunContext, name: str, when: bool = True):
    """``ctx.phase(name)`` when ``when``, else nothing (a phase that only exists under a launcher)."""
    return ctx.phase(name) if when else contextlib.nullcontext()


def run(cfg: DiffuseHighConfig, ctx: RunContext) -> RunRecord:
    """One preset. Under a launcher (``make reproduce-diffusehigh NPROC=N``, ``common.distributed``) the pixel presets
    split their seeds across the processes: process 0 gets the base model (committed checkpoint, cache or training),
    the KID feature net and the references' features and hands them to the others; process r runs seeds r, r + N, ...
    (one worker each); process 0 gathers every seed's result in seed order and writes the record, which equals the
    one-process record apart from timings. The SDXL preset splits its prompts (:func:`run_sdxl`)."""
    validate_config(cfg)
    if cfg.model.backbone == "sdxl":
        return run_sdxl(cfg, ctx)
    runtime.seed_everything(cfg.seeds[0])
    dc, mt = cfg.data, cfg.metrics
    world, main = distributed.world_size(), distributed.is_main()
    p = plan(cfg)
    record = ctx.new_record()
    state = net_state = ref_feats = None
    if main:  # everything the seeds share, once, in process 0 (which alone writes the cache)
        with ctx.phase("base model"):  # the committed checkpoint, the cache, or training it now
            unet, model_info = train_lib.get_base_model(cfg, ctx.preset, ctx.device, ctx.cache)
            exp = PixelExperiment(cfg, unet, ctx.device)
        measured = {1.0, *p.main, *p.ablation}  # sizes with the full reference sets and KID
        sizes = {1.0: exp.res, **{f: exp.size(f)[0] for f in p.factors()}}

        # References rendered natively at every size; a second independent set is measured like the samples (and its
        # KID to the first is the floor).
        def reference_count(f: float) -> int:
            return dc.num_reference_images if f in measured else min(dc.num_reference_images, JUMP_REFERENCE_IMAGES)

        with ctx.phase("metrics"):
            n_refs = dc.num_reference_images
            refs = {f: data_lib.render_set(n_refs, sizes[f], dc, data_lib.reference_seed(dc, sizes[f]))
                    for f in sorted(measured)}  # fmt: skip
            refs2 = {f: data_lib.render_set(reference_count(f), s, dc, data_lib.reference_seed(dc, s) + 1)
                     for f, s in sizes.items()}  # fmt: skip
        if mt.kid_feature_steps > 0:
            # Trained at every measured size (and the crop size): whole-image KID at 128x128 uses the same net.
            res_list = tuple(sorted({*(sizes[f] for f in measured),
                                     min(mt.patch_size, max(sizes[f] for f in measured))}))  # fmt: skip
            key = {"data": to_dict(dc), "steps": mt.kid_feature_steps, "res": res_list, "format": 1}
            with ctx.phase("feature net"):  # KID's features (cached)
                net_state = ctx.cache.get_or_create(
                    "kid_net", key, lambda: metrics.train_feature_net(dc, mt.kid_feature_steps, res_list)
                )
        measure = Measurer(cfg, net_state, None)
        with ctx.phase("metrics"):
            ref_feats = {f: measure.features(refs[f], 7) for f in refs} if net_state is not None else None
            measure.ref_feats = ref_feats or {}
            real = {f: measure(refs2[f], f, None, 0) for f in sizes}  # (per-image values, KID floor)
        state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    if world > 1:
        with ctx.phase("gathering"):  # process 0's model, KID net and reference features, to every process
            state, net_state, ref_feats = distributed.broadcast_object((state, net_state, ref_feats))

    # Every seed's sampling and metrics: in worker processes (one torch thread each) on CPU, or split across the
    # launched processes (one worker each: each process is one of the machine's workers then).
    seeds = list(cfg.seeds)
    workers = min(parallel.default_workers(), len(seeds)) if ctx.device.type == "cpu" and world == 1 else 1
    jobs = [(cfg, state, seed, net_state, ref_feats, str(ctx.device), 6 if seed == seeds[0] else 0) for seed in seeds]
    mine = distributed.shard(range(len(jobs)))
    with ctx.phase("sampling + metrics (workers)"):
        done = parallel.map_jobs(seed_job, [jobs[i] for i in mine], workers=workers, desc="seeds")
    with _phase(ctx, "gathering", world > 1):
        results: list[SeedResult] = by_index(dict(zip(mine, done, strict=True)))
    if not main:  # process 0 alone times, judges and writes
        return record

    top = max(p.main)
    timing = None
    if "direct" in cfg.ablation.baselines:
        with ctx.phase("timing"):  # alone, after the workers have finished
            timing = time_methods(cfg, exp, top)

    _add_measurements(record, cfg, p, sizes, real, results, timing)
    record.extra.update(
        per_image=_per_image(p, seeds, results),
        reference={f"{f:g}x": {m: _mean(v) for m, v in real[f][0].items()} for f in sizes},
        jump=None if p.jump is None else {"factor": p.jump[0], "progressive": p.jump[1], "one_jump": p.jump[2]},
        timing=timing,
    )
    claims_lib.add_claims(record)

    grid = {**results[0].grid, REAL: refs2[top][:6]} if results[0].grid else {}
    if grid:
        with ctx.phase("sample grid"):
            _save_grid(grid, GRID_ROWS, ctx.out_dir / GRID_FILE, exp.size(top))
    levels = core.levels_from_sigma(exp.alphas, cfg.stages.noise_sigma, cfg.stages.stage_steps)
    worker_phases: dict[str, float] = {}
    for r in results:
        for name, seconds in r.phases.items():
            worker_phases[name] = round(worker_phases.get(name, 0.0) + seconds, 2)
    record.extra.update(
        base_model={k: v for k, v in model_info.items() if k not in ("train_key",)}
        | {"params": count_params(unet), "denoiser_calls": sum(r.denoiser_calls for r in results)},
        sizes={f"{k:g}": v for k, v in sizes.items()},
        grid_rows=[r for r in GRID_ROWS if r in grid],
        stage_levels={"timesteps": list(levels.timesteps), "sigmas": [round(s, 4) for s in levels.sigmas]},
        workers=workers,
        worker_phases_s=worker_phases,
    )  # fmt: skip
    return record


def _mean(values) -> float:
    """The mean over the images that have a value (edge width is NaN where no object edge was found)."""
    v = np.asarray(values, float)
    return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan


def _per_image(p: Plan, seeds: list[int], results: list[SeedResult]) -> dict:
    """The per-image values the claims read (rounded), by condition, images in seed order."""
    conditions = {}
    for f, name in [(1.0, BASE), *[(f, n) for f, n, _ in p.conditions()]]:
        per_seed = len(results[0].values[(f, name)][M_OBJ])
        metrics_ = {m: claims_lib.round_values(np.concatenate([r.values[(f, name)][m] for r in results]))
                    for m in claims_lib.PER_IMAGE_METRICS if m in results[0].values[(f, name)]}  # fmt: skip
        conditions[claims_lib.key(f, name)] = {"per_seed": per_seed, "metrics": metrics_}
    return {"seeds": seeds, "conditions": conditions}


def _add_measurements(record: RunRecord, cfg: DiffuseHighConfig, p: Plan, sizes: dict, real: dict,
                      results: list[SeedResult], timing: dict | None) -> None:  # fmt: skip
    """The tables: per-seed means of every metric (KID per seed), the real references' single values, the timings."""
    seeds = [r.seed for r in results]
    band_cols = band_names(cfg.metrics.band_edges)
    timed = {}
    if timing is not None:
        top = max(p.main)
        time_note = f"{M_TIME_NOTE}; {len(timing['direct'])} repeats of {timing['images']} images"
        timed = {(1.0, BASE): timing["base"], (top, DH): timing["diffusehigh"], (top, DIRECT): timing["direct"]}

    def add(table: str, band: str | None, f: float, name: str) -> None:
        if name == REAL:
            values, kid = real[f]
            per_seed = {m: [_mean(v)] for m, v in values.items()} | {m: [v] for m, v in kid.items()}
            use_seeds = None
        else:
            src = (1.0, BASE) if name == BASE else (f, name)
            per_seed = {m: [_mean(r.values[src][m]) for r in results] for m in results[0].values[src]}
            per_seed |= {m: [r.kid[src][m] for r in results] for m in results[0].kid[src]}
            use_seeds = seeds
        for m in METRIC_ORDER:
            if m in per_seed and np.isfinite(per_seed[m]).all():  # edge width: no image with an edge -> no cell
                digits = 3 if m in (M_AREA, M_KID, M_KIDC, M_STRIPE, M_BORDER) else 2
                note = "mean over images with an object edge" if m == M_EDGE else ""
                record.add(table, name, m, per_seed[m], seeds=use_seeds, digits=digits, note=note)
        src = (1.0, BASE) if name == BASE else (f, name)
        if src in timed:
            record.add(table, name, M_TIME, timed[src], digits=3, note=time_note)
        for m in band_cols if band else ():
            if m in per_seed:
                record.add(band, name, m, per_seed[m], seeds=use_seeds, digits=3)

    for kind, make in (("main", main_table), ("ablation", ablation_table), ("jump", jump_table)):
        for f, conds in sorted(p.tables.get(kind, {}).items()):
            table, band = make(sizes[f], f), band_table(sizes[f], f)
            rows = [REAL, BASE, *conds] if kind == "main" else [REAL, *conds] if kind == "jump" else list(conds)
            for name in rows:
                add(table, None if kind == "ablation" else band, f, name)  # no band table for the ablations


# ----------------------------------------------------------------------------------------------------
# Figures and report


def _save_grid(grid: dict[str, torch.Tensor], rows: list[str], path: Path, size: tuple[int, int]) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    from common.plotting import savefig, style

    rows = [r for r in rows if r in grid]
    cols = min(len(v) for v in grid.values())
    with style(), matplotlib.rc_context({"savefig.dpi": GRID_DPI}):
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols + 1.6, 1.3 * len(rows)), squeeze=False)
        for i, name in enumerate(rows):
            images = grid[name]
            if images.shape[-2:] != tuple(size):
                images = torch.nn.functional.interpolate(images, size=size, mode="nearest")
            for j in range(cols):
                ax = axes[i][j]
                ax.imshow(images[j].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if j == 0:
                    ax.set_ylabel(
                        name.split(":")[0].replace(" (", "\n("), fontsize=6, rotation=0, ha="right", va="center"
                    )
        fig.subplots_adjust(wspace=0.03, hspace=0.03)
        savefig(fig, path)


def _wide_table(measurements, digits_default: int = 2) -> str:
    settings, metrics_ = [], []
    cells = {}
    for m in measurements:
        if m.setting not in settings:
            settings.append(m.setting)
        if m.metric not in metrics_:
            metrics_.append(m.metric)
        cells[(m.setting, m.metric)] = m.ours()
    metrics_ = [m for m in METRIC_ORDER if m in metrics_] + [m for m in metrics_ if m not in METRIC_ORDER]
    rows = [[s, *[cells.get((s, m), "–") for m in metrics_]] for s in settings]
    return markdown_table(["Setting", *metrics_], rows)


def _noise_figure(record: RunRecord, out_dir: Path) -> str | None:
    import matplotlib.pyplot as plt

    from common.plotting import method_color, savefig, style

    points: dict[str, list[tuple[float, float, float]]] = {}
    for m in record.measurements:
        if m.metric == M_PSNR and m.setting.startswith("noise sigma="):
            sigma = float(m.setting.split("=")[1].split(",")[0])
            label = "no DWT (SDEdit)" if m.setting.endswith("dwt_steps=0") else "DWT guidance"
            points.setdefault(label, []).append((sigma, m.mean, m.std))
    if len(points) < 2 or min(len(v) for v in points.values()) < 2:
        return None
    with style():
        fig, ax = plt.subplots()
        for label, pts in points.items():
            pts.sort()
            xs, ys, es = zip(*pts, strict=True)
            colour = method_color("ours" if label.startswith("DWT") else "baseline")
            ax.errorbar(xs, ys, yerr=es, label=label, color=colour, marker="o", capsize=3)
        ax.set_xlabel("noise level sigma of the stage")
        ax.set_ylabel("LR-PSNR to the guide [dB]")
        ax.set_title("Structure kept vs noise level (mean ± std over seeds)")
        ax.legend()
        savefig(fig, out_dir / NOISE_FILE)
    return NOISE_FILE


def report(record: RunRecord, out_dir: Path) -> str:
    """Wide tables (one row per method, one column per metric), the figures and the claims."""
    parts = [render_record(RunRecord(**{**vars(record), "measurements": [], "claims": []})).strip()]
    workers = record.extra.get("worker_phases_s")
    if workers:
        shares = " · ".join(f"{name} {seconds:.0f} s" for name, seconds in workers.items())
        parts.append(f"Worker time by phase ({record.extra.get('workers', '?')} worker process(es), one torch thread "
                     f"each, summed over the seeds): {shares}.")  # fmt: skip
    base = record.extra.get("base_model", {})
    if base:
        threads = base.get("threads_per_worker", base.get("threads", "?"))
        where = (f"in {base['workers']} worker process(es) of {threads} torch thread(s)" if "workers" in base
                 else f"on {threads} thread(s)")  # fmt: skip
        train_txt = f"trained {base.get('train_wall_time_s', '?')} s {where}" if "train_wall_time_s" in base else ""
        parts.append(
            f"Base model: {base.get('params', '?'):,} parameters, from {base.get('source', '?')}"
            + (f" (`{base['file']}`, sha256 `{base.get('sha256', '')[:16]}…`)" if "file" in base else "")
            + (f", {train_txt}" if train_txt else "")
            + ". Paper numbers: none verified (see `paper.py`), so no paper column. Each cell is the mean ± std over "
            f"seeds ({', '.join(map(str, record.seeds))}) of the per-seed means; LR-PSNR is measured against each "
            "image's own base sample; the claims' intervals are over images (see `claims.py`)."
        )
    gate = record.extra.get("quality_gate")
    if gate:
        parts.append(
            f"Base-sample quality gate (base samples vs real images at the base resolution): single-object share "
            f"{gate['single_share']:.0f}% (layout gate >= {claims_lib.GATE_SINGLE_MIN:g}%: "
            f"{'holds' if gate['layout'] else 'fails'}); stripe energy {gate['stripe_ratio']:.0%} of real (>= "
            f"{claims_lib.GATE_STRIPE_MIN:.0%}) and border mean {gate['border']:.2f} vs {gate['border_real']:.2f} "
            f"(within {claims_lib.GATE_BORDER_MAX:g}): texture gate {'holds' if gate['texture'] else 'fails'}."
        )
    if (out_dir / GRID_FILE).exists():
        rows = ", ".join(record.extra.get("grid_rows", []))
        parts.append(f"![sample grid]({GRID_FILE})\n\nRows, top to bottom: {rows} (first seed, first images; "
                     "smaller images shown nearest-neighbour enlarged).")  # fmt: skip
    for table, ms in record.tables().items():
        parts.append(f"#### {table}\n\n{_wide_table(ms)}")
    fig = _noise_figure(record, out_dir)
    if fig:
        parts.append(f"![noise level ablation]({fig})")
    if record.claims:
        rules = f"\n\n{RULES_MARKDOWN}" if any(c.effect for c in record.claims) else ""
        parts.append(f"#### Claims\n\n{claims_table(record.claims)}{rules}")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------
# The paper preset: SDXL from a local directory


EVAL_REAL = "real (reference images)"
"""The evaluation table's row of the reference images themselves (their Inception Score)."""


def stage_targets(cfg: DiffuseHighConfig) -> list[int]:
    """The side length of every DiffuseHigh stage of the SDXL run: ``round(base * factor)``; the paper preset gives
    the released 4096^2 schedule [2048, 3072, 4096] (x2, x1.5, x1.33 per stage from the 1024^2 base)."""
    res = cfg.model.resolution
    return [round(res * f) for f in cfg.stages.scale_factors]


def eval_table(res: int, final: int) -> str:
    return f"DemoFusion-style evaluation, SDXL {res} -> {final}"


@dataclass
class ImageResult:
    """What one prompt's image contributes to the SDXL record: metric values in the order measured, and the
    evaluation features by setting. Kept by prompt index, so the record does not depend on which process made it."""

    values: list[tuple[str, str, list[float]]] = dataclasses.field(default_factory=list)
    features: dict = dataclasses.field(default_factory=dict)

    def put(self, setting: str, metric: str, values) -> None:
        self.values.append((setting, metric, [float(v) for v in np.atleast_1d(values)]))


def by_index(local: dict[int, object]) -> list:
    """Every process's ``{index: item}`` merged, as a list in index order (one process: its items in order)."""
    merged: dict[int, object] = {}
    for part in distributed.gather_objects(local):
        merged.update(part)
    return [merged[i] for i in sorted(merged)]


def run_sdxl(cfg: DiffuseHighConfig, ctx: RunContext) -> RunRecord:
    """The released defaults on SDXL from ``cfg.sdxl_path``: time per image, LR-PSNR and detail vs bicubic at
    every stage (e.g. 2048^2, 3072^2 and 4096^2), optionally the SDEdit and direct baselines (``ablation.baselines``),
    the DemoFusion-style FID/KID/IS/CLIP evaluation (:mod:`diffusehigh.evaluation`; with ``inception_path`` /
    ``clip_path``) and the stage images of the first ``save_images`` prompts.

    Under a launcher (``common.distributed``) the prompts are split across the processes (process r takes prompts
    r, r + N, ...; prompt i is generated with seed ``seeds[0] + i`` wherever it runs), each process writes the images
    it made, and the per-image values and features are gathered and put in prompt order before anything is computed
    from them, so the record equals the one-process record apart from timings."""
    from .pipeline import load_local_pipeline, read_prompts

    with ctx.phase("base model"):
        pipe = load_local_pipeline(cfg.sdxl_path, cfg.model.dtype, ctx.device)
    extractor = None
    if cfg.inception_path or cfg.clip_path:
        with ctx.phase("metric networks"):
            extractor = evaluation.extractor_from_config(cfg, ctx.device)
    available = read_prompts(cfg.prompts_path)
    prompts = [available[i % len(available)] for i in range(cfg.num_samples)]  # cycled, a new seed per image
    record = ctx.new_record()
    s, res = cfg.stages, cfg.model.resolution
    targets = stage_targets(cfg)
    m = cfg.model
    base_kw = dict(negative_prompt=m.negative_prompt, height=res, width=res,
                   num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale)  # fmt: skip
    stage_kw = dict(diffusehigh_guidance_scale=s.diffusehigh_guidance_scale, target_height=targets,
                    target_width=targets, **pipeline_kwargs(s, cfg.model.num_inference_steps),
                    enable_vae_tiling=cfg.model.vae_tiling, output_type="pt")  # fmt: skip
    baselines = set(cfg.ablation.baselines)
    hp = cfg.metrics.highpass_sigma
    image_dir = ctx.out_dir / "images"
    final = targets[-1]

    def evaluate(result: ImageResult, setting: str, index: int, image: torch.Tensor, prompt: str) -> None:
        if extractor is not None:
            with ctx.phase("evaluation"):
                result.features[setting] = extractor.generated(index, image, prompt)

    local: dict[int, ImageResult] = {}
    for i in runtime.progress(distributed.shard(range(len(prompts))), desc="SDXL DiffuseHigh"):
        prompt, seed, r = prompts[i], cfg.seeds[0] + i, ImageResult()
        local[i] = r
        with ctx.phase("sampling: DiffuseHigh"):  # the base image and every stage
            start = time.perf_counter()
            out = pipe(prompt=prompt, **base_kw, **stage_kw, generator=runtime.generator(seed, ctx.device))
            r.put("DiffuseHigh", M_TIME, time.perf_counter() - start)
        with ctx.phase("metrics"):
            lr = out.guidance_images.float().cpu()
            stage_images = out.stage_images or [out.images]
            for size, image in zip(targets, stage_images, strict=True):  # every stage: 2048^2 as well as 4096^2
                hr = image.float().cpu()
                r.put(f"DiffuseHigh, stage {size}", M_PSNR, metrics.lr_psnr(hr, lr))
                r.put(f"DiffuseHigh, stage {size}", M_HF, 1e3 * metrics.highpass_energy(hr, hp))
                bicubic = core.upsample(lr, hr.shape[-2:]).clamp(0, 1)
                r.put(f"{BICUBIC}, {size}", M_HF, 1e3 * metrics.highpass_energy(bicubic, hp))
        for size, image in zip(targets, stage_images, strict=True):
            evaluate(r, f"DiffuseHigh, stage {size}", i, image, prompt)
        evaluate(r, f"{BICUBIC}, {final}", i, bicubic, prompt)
        if i < cfg.save_images:  # each process writes the images it made
            with ctx.phase("saving images"):
                _save_pngs(image_dir, i, {res: lr, **dict(zip(targets, stage_images, strict=True))})
        if "sdedit" in baselines:  # the same stages and random draws without DWT guidance
            with ctx.phase("sampling: baselines"):
                start = time.perf_counter()
                sd = pipe(prompt=prompt, **base_kw, **{**stage_kw, "enable_dwt": False},
                          generator=runtime.generator(seed, ctx.device))  # fmt: skip
                r.put(SDEDIT, M_TIME, time.perf_counter() - start)
            with ctx.phase("metrics"):
                r.put(SDEDIT, M_PSNR, metrics.lr_psnr(sd.images.float().cpu(), sd.guidance_images.float().cpu()))
                r.put(SDEDIT, M_HF, 1e3 * metrics.highpass_energy(sd.images.float().cpu(), hp))
            evaluate(r, SDEDIT, i, sd.images, prompt)
        if "direct" in baselines:  # the stock sampler at the final size (repeats objects in the paper's figures)
            with ctx.phase("sampling: direct"):
                start = time.perf_counter()
                size_kw = {**base_kw, "height": final, "width": final}
                g = runtime.generator(seed, ctx.device)
                direct = pipe.sample_direct(prompt=prompt, **size_kw, generator=g, output_type="pt").images
                r.put(DIRECT, M_TIME, time.perf_counter() - start)
            direct = torch.as_tensor(direct).float().cpu()
            with ctx.phase("metrics"):
                r.put(DIRECT, M_HF, 1e3 * metrics.highpass_energy(direct, hp))
            evaluate(r, DIRECT, i, direct, prompt)

    real: list = []
    if extractor is not None and cfg.reference_images_path and extractor.inception is not None:
        files = evaluation.reference_files(cfg.reference_images_path)
        with ctx.phase("evaluation"):
            mine = evaluation.reference_features(extractor, files, distributed.shard(range(len(files))),
                                                 progress=runtime.progress)  # fmt: skip
        with _phase(ctx, "gathering", distributed.world_size() > 1):
            real = by_index(mine)
    with _phase(ctx, "gathering", distributed.world_size() > 1):
        results: list[ImageResult] = by_index(local)
    if not distributed.is_main():  # process 0 alone computes the metrics and writes
        return record

    acc: dict[tuple[str, str], list[float]] = {}
    for r in results:  # prompt order, whichever process made the image
        for setting, metric, values in r.values:
            acc.setdefault((setting, metric), []).extend(values)
    table = f"SDXL {res} -> {final} (stages {targets})"
    world = distributed.world_size()
    note = f"{len(prompts)} prompts, {ctx.device}" + (f", {world} processes" if world > 1 else "")
    for (setting, metric), values in acc.items():
        record.add(table, setting, metric, [float(np.mean(values))], digits=3 if metric == M_HF else 2,
                   note=note if metric == M_TIME else "")  # fmt: skip
    measured = {}
    if extractor is not None:
        mt = cfg.metrics
        kw = dict(kid_subsets=mt.kid_subsets, kid_subset_size=mt.kid_subset_size, is_splits=mt.is_splits)
        with ctx.phase("evaluation"):
            settings = list(results[0].features) if results else []
            for setting in settings:
                measured[setting] = evaluation.compute_metrics([r.features[setting] for r in results], real, **kw)
            if real:
                ref_only = evaluation.compute_metrics(real, None, **kw)
                measured[EVAL_REAL] = {k: v for k, v in ref_only.items() if k in (evaluation.IS_R, evaluation.IS_C)}
        etable = eval_table(res, final)
        ref_note = f"{len(real)} reference images" if real else "no reference images: no FID/KID"
        for setting, values in measured.items():
            for metric, value in values.items():
                record.add(etable, setting, metric, [value], digits=3 if metric.startswith("KID") else 2,
                           note=f"{len(prompts)} prompts, {ref_note}")  # fmt: skip
        record.extra["evaluation"] = {
            "prompts": len(prompts), "reference_images": len(real), "resize": mt.fid_resize,
            "crop_size": mt.patch_size, "crops_per_image": mt.crops_per_image, "kid_subsets": mt.kid_subsets,
            "kid_subset_size": mt.kid_subset_size, "is_splits": mt.is_splits,
            "inception": bool(cfg.inception_path), "clip": bool(cfg.clip_path),
        }  # fmt: skip
    record.extra["stage_targets"] = targets
    evidence = (f"measured in '{eval_table(res, final)}'; no paper number to compare with (its tables could not be "
                "read; paper.py is empty)" if measured else "not measured: give inception_path (and "
                "reference_images_path for FID/KID) and clip_path")  # fmt: skip
    record.claim("FID/KID/IS/CLIP against other training-free methods at 2048^2 and 4096^2",
                 paper_evidence="quantitative comparison (table not read)", our_evidence=evidence,
                 verdict=NOT_TESTABLE)  # fmt: skip
    return record


def _save_pngs(directory: Path, index: int, images: dict[int, torch.Tensor]) -> None:
    """The base image and every stage's output of prompt ``index`` as 8-bit PNGs (first image of the batch)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for size, image in images.items():
        array = (image[0].float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(directory / f"prompt{index:03d}_{size}.png")


def pipeline_kwargs(s: StageConfig, num_inference_steps: int) -> dict:
    """The DiffuseHighSDXLPipeline keywords for a StageConfig (noise_sigma is matched by ``noising_steps``)."""
    if abs(s.noise_sigma - config_lib.SDXL_SIGMA_T281) > 1e-3 or num_inference_steps != 50:
        log.warning("the SDXL pipeline sets the noise level by noising_steps (15 of 50 = sigma 0.7789); "
                    "stages.noise_sigma=%s is not used", s.noise_sigma)  # fmt: skip
    return dict(noising_steps=s.stage_steps, enable_dwt=s.dwt_steps > 0, dwt_steps=s.dwt_steps,
                dwt_level=s.dwt_level, dwt_wave=s.dwt_wave, dwt_mode=s.dwt_mode,
                enable_sharpening=s.sharpening_alpha > 0, sharpening_kernel_size=s.sharpening_kernel_size,
                sharpening_sigma=s.sharpening_sigma, sharpening_alpha=s.sharpening_alpha,
                upsample_mode=s.upsample_mode, renoise=s.renoise)  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# `python -m diffusehigh train`


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="mini", choices=list(config_lib.PRESETS), help="whose base model")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (changes the training hash)")  # fmt: skip
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU worker processes sharing each step's micro-batches, one torch thread each (default: "
        "up to 2 cores, a divisor of train.micro_batches; the weights are the same for any count)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")


def train_command(args: argparse.Namespace) -> int:
    """User errors (a bad --set, a preset without a model to train, a bad config value) propagate as
    :class:`~common.errors.UserError`: the shared CLI prints one line and exits 2."""
    cfg = override(get_preset(config_lib.PRESETS, args.preset), args.sets)  # ConfigError: a user error
    if cfg.model.backbone != "pixel_unet" or cfg.train.steps < 1:
        trainable = [n for n, p in config_lib.PRESETS.items() if p().model.backbone == "pixel_unet" and p().train.steps]
        raise UserError(
            f"preset {args.preset!r} has no model to train (backbone {cfg.model.backbone!r}, train.steps "
            f"{cfg.train.steps}); presets with one: {', '.join(trainable)}"
        )
    validate_config(cfg)  # a one-line error before minutes of training, not after
    device = runtime.select_device(args.device)
    workers = train_lib.default_train_workers(cfg, device) if args.workers is None else args.workers
    command = shlex.join(["python", "-m", "diffusehigh", "train", "--preset", args.preset]
                         + [a for s in args.sets for a in ("--set", s)])  # fmt: skip
    state, summary = train_lib.train_base_model(cfg, device, workers)
    meta = {
        "train_hash": train_lib.train_hash(cfg),
        "train_key": train_lib.train_key(cfg),
        "preset": args.preset,
        "config_hash": config_hash(cfg),
        "command": command,
        "seeds": {"train": cfg.train.seed, "data": cfg.data.seed},
        "train_wall_time_s": summary["train_wall_time_s"],
        "workers": summary["workers"],
        "threads_per_worker": summary["threads"],
        "device": str(device),
        "device_name": runtime.device_name(device),
        "final_loss_ema": summary["final_loss_ema"],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = train_lib.write_checkpoint(state, meta, args.preset)
    print(f"wrote {path} ({path.stat().st_size} bytes) in {summary['train_wall_time_s']} s of training")
    return 0
