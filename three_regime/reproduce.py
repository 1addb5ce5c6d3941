"""The three-regime experiment for each preset: runs the grid, returns the results record (see common.cli).

Every preset runs the same pipeline (``grid.py``): dense training with checkpoints along the temperature
axis, one-shot magnitude pruning to every density, retraining with the masks fixed and the lr rewound,
then test error, LMC and CKA per cell; regimes from explicit thresholds (``RegimeConfig``); the case
studies on the resulting grid. The claims are judged from the record by the rules of ``claims.py``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from common import distributed as dist
from common.cli import RunContext, default_report
from common.data import DatasetNotFoundError
from common.plotting import plt, savefig, style
from common.results import RULES_MARKDOWN, RunRecord, format_mean_std
from common.results import markdown_table as md_table
from common.stats import paired_difference

from . import claims, grid, method
from .claims import CASE_METRIC, CASE_TABLES, RULES
from .config import ThreeRegimeConfig

log = logging.getLogger(__name__)

TEMPERATURE_LABEL = {
    "training_epochs": "Temp. (Training Epochs)",
    "batch_size": "Temp. (Batch Size)",
    "sam_rho": "Temp. (SAM rho)",
}
LOAD_LABEL = "Load (Density (%))"
DENSE_TABLE = "Dense models (temperature axis)"
GRID_TABLE = "Fig. 2 analogue: every cell"


def check_data(cfg: ThreeRegimeConfig) -> None:
    if cfg.data.dataset == "cifar10":
        root = Path(cfg.data.root).expanduser() if cfg.data.root else None
        if root is None or not (root / "cifar-10-batches-py").is_dir():
            raise DatasetNotFoundError(
                f"CIFAR-10 not found at data.root={cfg.data.root!r}. Put the extracted python version of CIFAR-10 "
                "(a folder cifar-10-batches-py/ with data_batch_1..5 and test_batch) in a directory and pass it as "
                "--set data.root=/path/to/that/directory"
            )


def _label(value: float) -> str:
    return f"{value:g}"


def aggregate(cfg: ThreeRegimeConfig, results: dict[grid.Cell, dict]) -> dict:
    """Per-seed and seed-averaged grids [temperature (hot first), density] of every quantity."""
    temps, dens, seeds = grid.hot_to_cold(cfg), list(cfg.grid.densities), list(cfg.seeds)
    shape = (len(seeds), len(temps), len(dens))
    te, mc, cka, density, dense_te = (np.zeros(shape) for _ in range(5))
    for s, seed in enumerate(seeds):
        for i, t in enumerate(temps):
            for j, d in enumerate(dens):
                _fill(results[grid.Cell(seed, t, d)], (s, i, j), te, mc, cka, density, dense_te)
    return {"temps": temps, "densities": dens, "seeds": seeds, "test_error": te, "mc": mc, "cka": cka,
            "achieved_density": density, "dense_test_error": dense_te[:, :, 0]}  # fmt: skip


def _fill(r: dict, at: tuple[int, int, int], te, mc, cka, density, dense_te) -> None:
    te[at] = 100 * float(np.mean(r["test_error"]))
    mc[at] = float(np.mean([p["mc"] for p in r["pairs"]]))
    cka[at] = float(np.mean([p["cka"] for p in r["pairs"]]))
    density[at] = 100 * r["achieved_density"]
    dense_te[at] = 100 * r["dense_test_error"]


def _choices_to_json(picks: dict[str, method.Choice]) -> dict:
    return {k: {"rows": c.rows, "test_error": c.test_error, "mean": c.mean_error} for k, c in picks.items()}


def case_studies(cfg: ThreeRegimeConfig, agg: dict) -> dict:
    """The case studies on each dense seed's grid (regimes from that seed's mc and CKA)."""
    out: dict[str, list] = {"direction": [], "selection": [], "sam": []}
    for s in range(len(agg["seeds"])):
        te, mc, cka, dense = agg["test_error"][s], agg["mc"][s], agg["cka"][s], agg["dense_test_error"][s]
        regimes = method.classify_regimes(mc, cka, cfg.regime)
        out["direction"].append(_choices_to_json(method.hyperparameter_direction(te, regimes, dense)))
        out["selection"].append(_choices_to_json(method.select_model(te, regimes, mc, cka, dense)))
        if cfg.grid.temperature == "sam_rho":
            start = int(np.argmin([abs(t - cfg.train.sam_rho) for t in agg["temps"]]))
            out["sam"].append(_choices_to_json(method.tune_by_regime_walk(te, regimes, dense, start)))
    return out


def run(cfg: ThreeRegimeConfig, ctx: RunContext) -> RunRecord:
    check_data(cfg)
    if ctx.device.type == "cpu" and cfg.model.arch == "mlp_bn":
        torch.set_num_threads(1)  # tiny matrices: one thread per job is far faster (notes §5.2)
    shard = (cfg.shard.index, cfg.shard.count)
    if dist.world_size() > 1 and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") not in ("", "no"):
        log.info("three_regime trains every job in float32, as the official code; the launcher's mixed precision "
                 "(%s) is not used", os.environ["ACCELERATE_MIXED_PRECISION"])  # fmt: skip
    grid.run_jobs(cfg, ctx.cache, ctx.device, shard=shard, workers=cfg.shard.workers, phase=ctx.phase)
    if not dist.is_main():  # rank 0 holds every cell now (grid._run_distributed) and alone writes the record
        return ctx.new_record(seeds=list(cfg.seeds))
    with ctx.phase("analysis"):  # reading the cells back, the tables, the regimes, the claims
        results = grid.collect(cfg, ctx.cache)
        agg = aggregate(cfg, results)
        record = ctx.new_record(seeds=list(cfg.seeds))
        temps, dens = agg["temps"], agg["densities"]
        tname = cfg.grid.temperature
        for i, t in enumerate(temps):
            record.add(DENSE_TABLE, f"{tname} = {_label(t)}", "dense test error", agg["dense_test_error"][:, i],
                       seeds=agg["seeds"], unit="%")  # fmt: skip
        for i, t in enumerate(temps):
            for j, d in enumerate(dens):
                setting = f"{tname} = {_label(t)}, density {_label(d)}%"
                kw = {"seeds": agg["seeds"]}
                record.add(GRID_TABLE, setting, "test error", agg["test_error"][:, i, j], unit="%", **kw)
                record.add(GRID_TABLE, setting, "mc (train error)", agg["mc"][:, i, j], digits=3, **kw)
                record.add(GRID_TABLE, setting, "CKA", agg["cka"][:, i, j], digits=3, **kw)
                record.add(GRID_TABLE, setting, "achieved density", agg["achieved_density"][:, i, j], unit="%", **kw)
        with ctx.phase("case studies"):
            cs = case_studies(cfg, agg)
        for name, per_seed in cs.items():
            for rule in RULES if per_seed else ():
                record.add(CASE_TABLES[name], rule, CASE_METRIC, [p[rule]["mean"] for p in per_seed],
                           seeds=agg["seeds"], unit="%")  # fmt: skip
        mean = {k: agg[k].mean(axis=0) for k in ("test_error", "mc", "cka")}
        regimes = method.classify_regimes(mean["mc"], mean["cka"], cfg.regime)
        record.extra = {
            "temperature": tname,
            "temps": temps,
            "densities": dens,
            "per_seed": {
                k: agg[k].tolist() for k in ("test_error", "mc", "cka", "achieved_density", "dense_test_error")
            },
            "mean": {k: v.tolist() for k, v in mean.items()},
            "regimes": regimes.tolist(),
            "case_studies": cs,
            "threads_per_job": torch.get_num_threads(),
            "workers": cfg.shard.workers,
            "cells": len(results),
            "retrain_seeds": list(cfg.retrain.seeds),
        }
        claims.add_claims(record)
    return record


# ----------------------------------------------------------------------------------------------------
# Report


def _boundaries(ax, regimes: np.ndarray) -> None:
    """Solid lines between Regime I and II cells, dashed between II-A and II-B (cell edges)."""
    n_t, n_d = regimes.shape
    for i in range(n_t):
        for j in range(n_d):
            for di, dj in ((1, 0), (0, 1)):
                a, b = i + di, j + dj
                if a >= n_t or b >= n_d:
                    continue
                r1, r2 = regimes[i, j], regimes[a, b]
                if r1 == r2:
                    continue
                style_ = "-" if method.REGIME_I in (r1, r2) else "--"
                if di:  # horizontal edge between rows i and i+1
                    ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="k", linestyle=style_, linewidth=2)
                else:
                    ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="k", linestyle=style_, linewidth=2)


def _axes(ax, x: dict, title: str) -> None:
    ax.set_xticks(range(len(x["densities"])), [_label(d) for d in x["densities"]])
    ax.set_yticks(range(len(x["temps"])), [_label(t) for t in x["temps"]])
    ax.set_xlabel(LOAD_LABEL)
    ax.set_ylabel(TEMPERATURE_LABEL[x["temperature"]] + " (hot at top)")
    ax.set_title(title)
    ax.grid(False)


def plot_phase_diagrams(record: RunRecord, path: Path) -> Path:
    x = record.extra
    te = np.asarray(x["mean"]["test_error"]) / 100
    panels = [
        ("Test error", te, "viridis"),
        ("Normalized test error", te - te.min(axis=0, keepdims=True), "viridis"),
        ("Linear mode connectivity (mc)", np.asarray(x["mean"]["mc"]), "viridis"),
        ("CKA similarity", np.asarray(x["mean"]["cka"]), "viridis"),
    ]
    regimes = np.asarray(x["regimes"], dtype=object)
    with style():
        fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
        for ax, (title, values, cmap) in zip(axes, panels, strict=True):
            im = ax.imshow(values, cmap=cmap, aspect="auto", origin="upper")
            fig.colorbar(im, ax=ax)
            lo, hi = float(values.min()), float(values.max())
            for (i, j), v in np.ndenumerate(values):
                light = hi > lo and (v - lo) / (hi - lo) > 0.6  # viridis is light at the top: dark text there
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6, color="k" if light else "w")
            _boundaries(ax, regimes)
            _axes(ax, x, title)
        fig.tight_layout()
        return savefig(fig, path)


REGIME_COLORS = {method.REGIME_I: "#d62728", method.REGIME_IIA: "#ff7f0e", method.REGIME_IIB: "#1f77b4"}


def plot_regime_map(record: RunRecord, path: Path) -> Path:
    x = record.extra
    regimes = np.asarray(x["regimes"], dtype=object)
    codes = np.vectorize(method.REGIMES.index)(regimes)
    from matplotlib.colors import ListedColormap

    with style():
        fig, ax = plt.subplots(figsize=(5.5, 4))
        cmap = ListedColormap([REGIME_COLORS[r] for r in method.REGIMES])
        ax.imshow(codes, cmap=cmap, vmin=0, vmax=2, aspect="auto")
        for (i, j), r in np.ndenumerate(regimes):
            ax.text(j, i, r, ha="center", va="center", fontsize=8, color="w")
        _boundaries(ax, regimes)
        _axes(ax, x, "Regime map")
        return savefig(fig, path)


def _wide(x: dict, values: np.ndarray, fmt: str) -> str:
    headers = [f"{x['temperature']} \\ density"] + [f"{_label(d)}%" for d in x["densities"]]
    rows = [[_label(t)] + [format(v, fmt) if not isinstance(v, str) else v for v in values[i]]
            for i, t in enumerate(x["temps"])]  # fmt: skip
    return md_table(headers, rows)


def _case_table(record: RunRecord, name: str) -> str:
    x = record.extra
    per_seed = x["case_studies"][name]
    rows = []
    values = {rule: [p[rule]["mean"] for p in per_seed] for rule in RULES}
    for rule in RULES:
        rows.append((rule, format_mean_std(values[rule]), len(values[rule])))
    base = values[RULES[1]]
    for rule in (RULES[0], RULES[2]):  # paired by dense seed: the interval of the difference, not of each mean
        rows.append((f"{rule} - baseline (95% CI)", paired_difference(values[rule], base).text(2, "pp"), len(base)))
    return md_table(["rule", "test error reached (%), mean ± std over dense seeds", "n"], rows)


def _selection_table(record: RunRecord) -> str:
    x = record.extra
    temps, dens = x["temps"], x["densities"]
    te = np.asarray(x["mean"]["test_error"])
    regimes = np.asarray(x["regimes"], dtype=object)
    picks = method.select_model(te, regimes, np.asarray(x["mean"]["mc"]), np.asarray(x["mean"]["cka"]),
                                np.asarray(x["per_seed"]["dense_test_error"]).mean(0))  # fmt: skip
    rows = []
    for j, d in enumerate(dens):
        cells = [f"{_label(temps[picks[r].rows[j]])} ({picks[r].test_error[j]:.2f}%)" for r in RULES]
        rows.append([f"{_label(d)}%", *cells])
    return md_table(["density", *[f"{r}: {x['temperature']} (test error)" for r in RULES]], rows)


def report(record: RunRecord, out_dir: Path) -> str:
    x = record.extra
    figures = out_dir / "figures"
    plot_phase_diagrams(record, figures / "phase_diagrams.png")
    plot_regime_map(record, figures / "regime_map.png")
    cfg = record.config
    rc = cfg["regime"]
    reference = {"column_median": "the median CKA of the connected cells of its density column",
                 "column_max": "the highest CKA among the connected cells of its density column"}.get(
        rc["cka_split"], f"CKA {rc['cka_threshold']}")  # fmt: skip
    margin = rc.get("cka_margin", 0.0)
    split = f"{reference} less {margin:g}" if margin else reference
    te = np.asarray(x["mean"]["test_error"])
    n_seeds, n_retrain = len(record.seeds), len(x["retrain_seeds"])
    parts = [
        default_report(record, out_dir).split("\n\n")[0],
        f"{len(x['temps'])} temperatures x {len(x['densities'])} densities, {n_seeds} dense seed(s) x {n_retrain} "
        f"retraining seeds ({n_retrain * (n_retrain - 1) // 2} pair(s) per cell for mc and CKA); "
        f"{x['workers']} worker process(es), {x['threads_per_job']} thread(s) each. Regimes: I iff mc < "
        f"-{rc['mc_barrier']}; a connected cell is II-B iff its CKA >= {split}, else II-A (our thresholds: the "
        "paper draws its boundaries by hand). Solid lines: I/II boundary; dashed: II-A/II-B. The paper's numbers "
        "could not be read (paper.py), so there is no Paper column.",
        "![Fig. 2 analogue: test error, normalized test error, mc, CKA](figures/phase_diagrams.png)\n\n"
        "![Regime map](figures/regime_map.png)",
        "#### Test error (%), mean over seeds\n\n" + _wide(x, te, ".2f"),
        "#### Normalized test error (pp above the best temperature of each density)\n\n"
        + _wide(x, te - te.min(axis=0, keepdims=True), ".2f"),
        "#### mc (training error; < 0 = barrier)\n\n" + _wide(x, np.asarray(x["mean"]["mc"]), ".3f"),
        "#### CKA of softmax outputs\n\n" + _wide(x, np.asarray(x["mean"]["cka"]), ".3f")
        if cfg["metrics"]["cka_features"] == "softmax"
        else "#### CKA of logits\n\n" + _wide(x, np.asarray(x["mean"]["cka"]), ".3f"),
        "#### Regime map\n\n" + _wide(x, np.asarray(x["regimes"], dtype=object), ""),
        f"#### {DENSE_TABLE}\n\n"
        + md_table(["setting", "dense test error (%)", "n"],
                   [(m.setting, m.ours(), m.n) for m in record.measurements if m.table == DENSE_TABLE]),
        f"#### {CASE_TABLES['direction']}\n\nFrom every cell, one step hotter / stay / colder: the regime rule "
        "(I: hotter, II-A: colder, II-B: stay) against the baseline (the neighbour with the best dense test "
        "accuracy); scored by the retrained test error of the cell reached, averaged over start cells.\n\n"
        + _case_table(record, "direction"),
        f"#### {CASE_TABLES['selection']}\n\nPer density, the regime rule picks the II-B cell with the highest CKA "
        "(else the connected cell with the highest CKA, else the smallest barrier); the baseline picks the dense "
        "model with the best test accuracy.\n\n" + _case_table(record, "selection")
        + "\n\nPicks on the seed-averaged grid:\n\n" + _selection_table(record),
    ]  # fmt: skip
    if x["case_studies"]["sam"]:
        parts.append(f"#### {CASE_TABLES['sam']}\n\n" + _case_table(record, "sam"))
    if record.claims:
        from common.results import claims_table

        rules = f"\n\n{RULES_MARKDOWN}" if any(c.effect for c in record.claims) else ""
        parts.append("#### Claims\n\n" + claims_table(record.claims) + rules)
    return "\n\n".join(parts) + "\n"
