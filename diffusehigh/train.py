"""Training of the pixel-space base model, its committed checkpoint, and the cache around both.

``python -m diffusehigh train --preset mini`` trains the UNet of a preset and writes it to
``diffusehigh/checkpoints/<preset>_unet.safetensors`` with a JSON sidecar (the training key's hash, the command,
seeds, wall time, worker processes, sha256). ``reproduce`` uses a committed checkpoint only when the hash of its
training key equals the current config's; otherwise it trains (cached in the ArtifactCache by the same key).
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

from common import distributed, parallel
from common.config import ConfigError, to_dict
from common.errors import check_finite
from common.runtime import ArtifactCache, key_hash, progress

from . import data as data_lib
from .config import DiffuseHighConfig
from .models import build_scheduler, build_unet

log = logging.getLogger(__name__)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
FORMAT = 2
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


def default_train_workers(cfg: DiffuseHighConfig, device: torch.device) -> int:
    """Worker processes for training: up to ``train.micro_batches`` on an unlaunched CPU run whose training is long
    enough to be worth starting processes for (seconds each); one otherwise (the weights are the same)."""
    tc = cfg.train
    if device.type != "cpu" or distributed.world_size() > 1 or tc.steps < MIN_STEPS_FOR_WORKERS:
        return 1
    workers = max(1, min(parallel.default_workers(), tc.micro_batches))  # a bad micro_batches: train_base_model says
    while tc.micro_batches % workers:
        workers -= 1
    return workers


MIN_STEPS_FOR_WORKERS = 500


def train_base_model(
    cfg: DiffuseHighConfig, device: torch.device, workers: int = 1
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the UNet with the DDPM epsilon (or v / x0) loss; returns the EMA weights (CPU) and a summary.

    Each step's batch is ``train.micro_batches`` equal micro-batches; the step's gradient is the mean of their
    gradients, summed in micro-batch order. With ``workers`` > 1 (CPU) the micro-batches are shared by that many
    processes (a gloo group, :func:`common.parallel.run_group`), each on one torch thread, which exchange their
    micro-batch gradients every step; with one worker this process computes them all on one torch thread. Either
    way every micro-batch's gradient comes from the same kernels on the same thread count and they are summed in
    the same order, so the weights are the same bit for bit with 1 or ``micro_batches`` workers
    (``tests/diffusehigh/test_train.py``).
    """
    tc = cfg.train
    if tc.steps < 1:
        raise ValueError("train.steps must be >= 1 to train the pixel model")
    if tc.micro_batches < 1 or tc.batch_size % tc.micro_batches:
        raise ConfigError(f"train.batch_size {tc.batch_size} must be a multiple of micro_batches {tc.micro_batches}")
    if workers < 1 or tc.micro_batches % workers:
        raise ConfigError(f"workers must divide train.micro_batches ({tc.micro_batches}), got {workers}")
    start = time.perf_counter()
    if device.type != "cpu":
        state, summary = _train(cfg, str(device))
        workers = 1
    else:
        state, summary = parallel.run_group(_train, (cfg, "cpu"), workers=workers)
    wall = time.perf_counter() - start
    summary = {"train_wall_time_s": round(wall, 1), **summary, "workers": workers}
    log.info("trained the base UNet: %d steps in %.0f s (%d worker(s)), loss EMA %.4f", tc.steps, wall, workers,
             summary["final_loss_ema"])  # fmt: skip
    return state, summary


def _train(cfg: DiffuseHighConfig, device: str) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The training loop of :func:`train_base_model`, run by every worker (rank 0 returns the weights)."""
    tc, mc = cfg.train, cfg.model
    group = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if group else (0, 1)
    per_worker, micro_size = tc.micro_batches // world, tc.batch_size // tc.micro_batches
    mine = range(rank * per_worker, (rank + 1) * per_worker)
    dev = torch.device(device)
    torch.manual_seed(tc.seed)
    g = torch.Generator().manual_seed(tc.seed)
    images = data_lib.render_set(cfg.data.num_train_images, mc.resolution, cfg.data, seed=cfg.data.seed) * 2 - 1
    unet = build_unet(mc).to(dev)
    params = list(unet.parameters())
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()} if rank == 0 else None
    floating = [k for k, v in unet.state_dict().items() if v.dtype.is_floating_point]
    alphas = build_scheduler(mc).alphas_cumprod.to(dev)
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0, fused=True)  # fused: 5x faster steps on CPU
    losses, running = [], None
    bar = progress(range(tc.steps), desc=f"train base UNet ({world} worker{'s' if world > 1 else ''})",
                   **({"disable": True} if rank else {}))  # fmt: skip
    for step in bar:
        for group_ in opt.param_groups:
            group_["lr"] = lr_at(step, tc.steps, tc.lr, tc.warmup_steps)
        # The whole batch's draws on every worker (the same generator), then each takes its micro-batches.
        idx = torch.randint(0, len(images), (tc.batch_size,), generator=g)
        x0 = images[idx]
        if tc.hflip:
            flip = torch.rand(tc.batch_size, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        x0 = x0.to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, mc.num_train_timesteps, (tc.batch_size,), generator=g).to(dev)
        a = alphas[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}[
            mc.prediction_type
        ]
        grads, values = [], []
        for m in mine:
            part = slice(m * micro_size, (m + 1) * micro_size)
            loss = torch.nn.functional.mse_loss(unet(sample=x_t[part], timestep=t[part]).sample, target[part])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]))
            values.append(loss.detach().reshape(1))
        grads, values = torch.stack(grads), torch.cat(values)
        if world > 1:  # every micro-batch's gradient and loss on every worker, in micro-batch order
            grads, values = _all_gather(grads), _all_gather(values)
        total = grads[0].clone()
        for grad in grads[1:]:
            total += grad
        total *= 1.0 / tc.micro_batches
        value = float(values.sum()) / tc.micro_batches
        check_finite(value, step=step, where=f"diffusehigh base UNet training, seed {tc.seed}")
        offset = 0
        for p in params:
            p.grad = total[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        opt.step()
        if ema is not None:  # ema += (1 - decay) * (weights - ema), all tensors in one call
            decay = min(tc.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                current = unet.state_dict()
                torch._foreach_lerp_([ema[k] for k in floating], [current[k] for k in floating], 1 - decay)
                for k in current.keys() - floating:
                    ema[k].copy_(current[k])
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == tc.steps - 1:
            losses.append([step, running])
            bar.set_postfix(loss=f"{running:.4f}")
    state = None if ema is None else {k: v.detach().cpu().contiguous() for k, v in ema.items()}
    threads = torch.get_num_threads()
    return state, {"loss_curve": losses, "final_loss_ema": running, "threads": threads, "device": device}


def _all_gather(local: torch.Tensor) -> torch.Tensor:
    """Every worker's ``local`` (a stack of equal shape), concatenated in rank order."""
    parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, local.contiguous())
    return torch.cat(parts)


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
        workers = default_train_workers(cfg, device)
        state, summary = cache.get_or_create("base_unet", key, lambda: train_base_model(cfg, device, workers))
        info = {"source": source, "train_hash": train_hash(cfg), **summary}
    unet.load_state_dict(state)
    return unet.to(device).eval(), info
