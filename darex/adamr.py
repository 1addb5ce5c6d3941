"""AdamR: Adam with a decoupled decay towards the pre-trained weights (DAREx-L2 / DAREx-L1, paper §4.2).

Paper: Deng et al., ICLR 2025 (arXiv:2410.09344), "AdamR-L2" and "AdamR-L1". Reference code:
vengdeng/DAREx ``AdamR.py`` (read for facts; not copied). Like AdamW's decoupled weight decay, but the
decay pulls θ towards θ_P instead of towards 0, and it is normalised by the root of the mean
second-moment estimate over all parameters (the "stable" decay of AdamS):

    θ ← θ − λ · lr / s · (θ − θ_P)           (L2)      or      θ ← θ − λ · lr / s · sign(θ − θ_P)   (L1)
    θ ← θ − lr · m̂ / (√v̂ + ε)                  (the Adam step)

with s = sqrt(mean of v̂ over every entry of every parameter), s = 1 while that mean is 0. Keeping the
deltas small and centred makes DARE's random drop-and-rescale safe at extreme rates (L2), or makes many
deltas exactly negligible so magnitude pruning keeps what matters (L1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class AdamR(torch.optim.Optimizer):
    """Adam with decoupled regularisation towards reference (pre-trained) tensors.

    Args:
        params: the parameters to optimise (a single group).
        reference: θ_P, one tensor per parameter, in the same order and shapes.
        lr, betas, eps: as in ``torch.optim.Adam``.
        weight_decay: λ, the strength of the pull towards ``reference`` (0 gives exactly Adam).
        mode: ``"l2"`` (decay proportional to θ − θ_P) or ``"l1"`` (proportional to its sign).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        reference: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-4,
        mode: str = "l2",
    ):
        if mode not in ("l2", "l1"):
            raise ValueError(f"mode must be 'l2' or 'l1', got {mode!r}")
        if lr < 0 or weight_decay < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("lr, weight_decay and eps must be >= 0 and betas in [0, 1)")
        params = list(params)
        reference = [r.detach().clone() for r in reference]
        if len(params) != len(reference) or any(p.shape != r.shape for p, r in zip(params, reference, strict=False)):
            raise ValueError("reference must hold one tensor of the same shape per parameter, in order")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, mode=mode))
        for p, r in zip(params, reference, strict=True):
            self.state[p]["reference"] = r.to(p.device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            active = [p for p in group["params"] if p.grad is not None]
            # 1) Moment updates, as in Adam.
            for p in active:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            if not active:
                continue
            # 2) s = sqrt(mean v̂) over all entries of all parameters of the group.
            total, count = 0.0, 0
            for p in active:
                state = self.state[p]
                total += (state["exp_avg_sq"].sum() / (1 - beta2 ** state["step"])).item()
                count += p.numel()
            s = math.sqrt(total / count) if total > 0 else 1.0
            # 3) Decoupled decay towards the reference, then 4) the Adam step.
            for p in active:
                state = self.state[p]
                if group["weight_decay"] > 0:
                    diff = p - state["reference"]
                    decay = diff if group["mode"] == "l2" else diff.sign()
                    p.add_(decay, alpha=-group["weight_decay"] * lr / s)
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)
        return loss
