"""Training of the pixel-space base model, its committed checkpoint, and the cache around both.

``python -m diffusehigh train --preset mini`` trains the UNet of a preset and writes it to
``diffusehigh/checkpoints/<preset>_unet.safetensors`` with a JSON sidecar (the training key's hash, the command,
seeds, wall time, threads, sha256). ``reproduce`` uses a committed checkpoint only when the hash of its training
key equals the current config's; otherwise it trains (cached in the ArtifactCache by the same key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from common.config import to_dict
from common.errors import check_finite
from common.runtime import ArtifactCache, key_hash, progress

from . import data as data_lib
from .config import DiffuseHighConfig
from .models import build_scheduler, build_unet

log = logging.getLogger(__name__)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
FORMAT = 1
"""Bump when training code changes what it produces for the same config (invalidates caches and checkpoints)."""

_MODEL_FIELDS = (
    "backbone", "resolution", "block_out_channels", "layers_per_block", "norm_num_groups", "prediction_type",
    "num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
)  # fmt: skip
_DATA_FIELDS = (
    "renderer", "num_train_images", "radius_range", "center_range", "stripe_period_px", "stripe_contrast",
    "grain_sigma", "seed",
)  # fmt: skip


def train_key(cfg: DiffuseHighConfig) -> dict[str, Any]:
    """Everything that determines the trained weights (model architecture and schedule, training, data)."""
    model, data = to_dict(cfg.model), to_dict(cfg.data)
    return {
        "format": FORMAT,
        "model": {k: model[k] for k in _MODEL_FIELDS},
        "train": to_dict(cfg.train),
        "data": {k: data[k] for k in _DATA_FIELDS},
    }


def train_hash(cfg: DiffuseHighConfig) -> str:
    return key_hash(train_key(cfg))


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_base_model(cfg: DiffuseHighConfig, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the UNet with the DDPM epsilon (or v / x0) loss; returns the EMA weights (CPU) and a summary."""
    tc, mc = cfg.train, cfg.model
    if tc.steps < 1:
        raise ValueError("train.steps must be >= 1 to train the pixel model")
    torch.manual_seed(tc.seed)
    g = torch.Generator().manual_seed(tc.seed)
    images = data_lib.render_set(cfg.data.num_train_images, mc.resolution, cfg.data, seed=cfg.data.seed) * 2 - 1
    unet = build_unet(mc).to(device)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    scheduler = build_scheduler(mc)
    alphas = scheduler.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=0.0)
    losses, start = [], time.perf_counter()
    bar = progress(range(tc.steps), desc="train base UNet")
    running = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc.steps, tc.lr, tc.warmup_steps)
        idx = torch.randint(0, len(images), (tc.batch_size,), generator=g)
        x0 = images[idx]
        if tc.hflip:
            flip = torch.rand(tc.batch_size, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        x0 = x0.to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, mc.num_train_timesteps, (tc.batch_size,), generator=g).to(device)
        a = alphas[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}[
            mc.prediction_type
        ]
        loss = torch.nn.functional.mse_loss(unet(sample=x_t, timestep=t).sample, target)
        value = loss.item()
        check_finite(value, step=step, where=f"diffusehigh base UNet training, seed {tc.seed}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(tc.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay) if v.dtype.is_floating_point else ema[k].copy_(v)
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == tc.steps - 1:
            losses.append([step, running])
            bar.set_postfix(loss=f"{running:.4f}")
    wall = time.perf_counter() - start
    state = {k: v.detach().cpu().contiguous() for k, v in ema.items()}
    summary = {"train_wall_time_s": round(wall, 1), "loss_curve": losses, "final_loss_ema": running,
               "threads": torch.get_num_threads(), "device": str(device)}  # fmt: skip
    log.info("trained the base UNet: %d steps in %.0f s, loss EMA %.4f", tc.steps, wall, running)
    return state, summary


def checkpoint_paths(preset: str) -> tuple[Path, Path]:
    return CHECKPOINT_DIR / f"{preset}_unet.safetensors", CHECKPOINT_DIR / f"{preset}_unet.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_checkpoint(state: dict[str, torch.Tensor], meta: dict[str, Any], preset: str) -> Path:
    """Save the weights as safetensors and the sidecar JSON (with the file's sha256)."""
    from safetensors.torch import save_file

    weights, sidecar = checkpoint_paths(preset)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights))
    meta = {**meta, "file": weights.name, "bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return weights


def load_committed_checkpoint(cfg: DiffuseHighConfig, preset: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The committed checkpoint of ``preset`` if its training hash and sha256 match; else None (with a log line)."""
    from safetensors.torch import load_file

    weights, sidecar = checkpoint_paths(preset)
    if not (weights.exists() and sidecar.exists()):
        return None
    meta = json.loads(sidecar.read_text())
    if meta.get("train_hash") != train_hash(cfg):
        log.info("committed checkpoint %s is for another training config; training instead", weights.name)
        return None
    if meta.get("sha256") != sha256_file(weights):
        log.warning("committed checkpoint %s does not match its recorded sha256; training instead", weights.name)
        return None
    return load_file(str(weights)), meta


def get_base_model(cfg: DiffuseHighConfig, preset: str, device: torch.device, cache: ArtifactCache):
    """The trained UNet (eval mode, on ``device``) and where it came from (committed / cache / trained now)."""
    unet = build_unet(cfg.model)
    committed = load_committed_checkpoint(cfg, preset)
    if committed is not None:
        state, meta = committed
        info = {"source": "committed checkpoint", "file": f"diffusehigh/checkpoints/{meta['file']}", **meta}
    else:
        key = train_key(cfg)
        source = "cache" if ("base_unet", key) in cache else "trained in this run"
        state, summary = cache.get_or_create("base_unet", key, lambda: train_base_model(cfg, device))
        info = {"source": source, "train_hash": train_hash(cfg), **summary}
    unet.load_state_dict(state)
    return unet.to(device).eval(), info
