"""The three-regime experiment for each preset: runs the grid, returns the results record (see common.cli).

Every preset runs the same pipeline (``grid.py``): dense training with checkpoints along the temperature
axis, one-shot magnitude pruning to every density, retraining with the masks fixed and the lr rewound,
then test error, LMC and CKA per cell; regimes from explicit thresholds (``RegimeConfig``); the case
studies on the resulting grid; and claims whose verdicts are computed by the rules stated in their evidence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from common.cli import RunContext, default_report
from common.data import DatasetNotFoundError
from common.plotting import plt, savefig, style
from common.results import NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED, RunRecord, format_mean_std
from common.results import markdown_table as md_table

from . import grid, method
from .config import RegimeConfig, ThreeRegimeConfig

log = logging.getLogger(__name__)

TEMPERATURE_LABEL = {
    "training_epochs": "Temp. (Training Epochs)",
    "batch_size": "Temp. (Batch Size)",
    "sam_rho": "Temp. (SAM rho)",
}
LOAD_LABEL = "Load (Density (%))"
DENSE_TABLE = "Dense models (temperature axis)"
GRID_TABLE = "Fig. 2 analogue: every cell"
CASE_TABLES = {
    "direction": "Case study 1: which way to move the temperature",
    "selection": "Case study 2: which dense model to prune",
    "sam": "Case study 3: tuning SAM's rho",
}
RULES = ("regime rule", "baseline (dense accuracy)", "oracle")
TIE_PP = 0.2
"""Case studies: a rule is better / worse than the baseline when its mean test error differs by more than this (pp)."""


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
    grid.run_jobs(cfg, ctx.cache, ctx.device, shard=shard, workers=cfg.shard.workers, phase=ctx.phase)
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
                record.add(CASE_TABLES[name], rule, "mean test error reached", [p[rule]["mean"] for p in per_seed],
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
        add_claims(record, cfg.regime)
    return record


# ----------------------------------------------------------------------------------------------------
# Claims


def _se(se: float) -> str:
    return f"{se:.2f}" if np.isfinite(se) else "n/a (one value per half)"


def _halves(n: int) -> tuple[slice, slice]:
    h = n // 2
    return slice(0, h), slice(n - h, n)


def add_claims(record: RunRecord, regime_cfg: RegimeConfig) -> None:
    x = record.extra
    temps, dens = x["temps"], x["densities"]
    te = np.asarray(x["per_seed"]["test_error"])  # [seed, T (hot first), D]
    mc_seed, cka_seed = np.asarray(x["per_seed"]["mc"]), np.asarray(x["per_seed"]["cka"])
    mc, cka = mc_seed.mean(0), cka_seed.mean(0)
    lo, hi = int(np.argmin(dens)), int(np.argmax(dens))
    hot, cold = _halves(len(temps))
    eps = regime_cfg.mc_barrier
    testable = len(temps) >= 2 and len(dens) >= 2
    regimes = np.asarray(x["regimes"], dtype=object)
    where_i = [f"({_label(temps[i])}, {_label(dens[j])}%)" for i, j in np.argwhere(regimes == method.REGIME_I)]

    # C1: barriers at low density and low temperature.
    d_part = mc[:, lo].mean() < -eps and mc[:, hi].mean() >= -eps
    t_part = mc[cold, lo].mean() < min(mc[hot, lo].mean(), -eps)
    verdict = REPRODUCED if d_part and t_part else PARTLY if (d_part or t_part) else NOT_REPRODUCED
    record.claim(
        "Regime I (an error barrier on the line between two retrainings, mc < 0) appears at low density and low "
        "temperature",
        paper_evidence="Fig. 1 (schematic), Fig. 2 LMC panel: mc << 0 only for density <= ~10 % and epochs >= ~90",
        our_evidence=(
            f"mean mc at density {_label(dens[lo])}%: {mc[:, lo].mean():.3f}, at {_label(dens[hi])}%: "
            f"{mc[:, hi].mean():.3f}; at {_label(dens[lo])}%, colder half of the temperatures "
            f"{mc[cold, lo].mean():.3f} "
            f"vs hotter half {mc[hot, lo].mean():.3f}. Regime I cells (temperature, density): "
            f"{', '.join(where_i) or 'none'}. Rule: density part = mc(lowest density) < -{eps} <= mc(highest); "
            f"temperature part = at the lowest density, the colder half below -{eps} and below the hotter half; "
            "both = reproduced, one = partly"
        ),
        verdict=verdict if testable else NOT_TESTABLE,
    )

    # C2: the dichotomy in test error.
    def delta(j: int) -> tuple[float, float]:
        a, b = te[:, hot, j].flatten(), te[:, cold, j].flatten()
        if min(len(a), len(b)) < 2:  # no spread to compare with: never counted as beyond noise
            return float(a.mean() - b.mean()), float("inf")
        return float(a.mean() - b.mean()), float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))

    (d_lo, se_lo), (d_hi, se_hi) = delta(lo), delta(hi)
    right_lo, right_hi = d_lo < 0, d_hi > 0
    sig = int(right_lo and abs(d_lo) > 2 * se_lo) + int(right_hi and abs(d_hi) > 2 * se_hi)
    verdict = REPRODUCED if sig == 2 else PARTLY if (right_lo and right_hi) or sig == 1 else NOT_REPRODUCED
    best = te.mean(0).argmin(0)
    record.claim(
        "Dichotomy: at low density a hotter dense model prunes better, at high density it prunes worse",
        paper_evidence="Abstract, Fig. 1; Fig. 2 (normalised test error): favourable I -> II-A by raising and "
        "II-A -> II-B by lowering the temperature",
        our_evidence=(
            f"test error, hotter half minus colder half of the temperatures: {d_lo:+.2f} ± {_se(se_lo)} pp at density "
            f"{_label(dens[lo])}%, {d_hi:+.2f} ± {_se(se_hi)} pp at {_label(dens[hi])}% (± = standard error over dense "
            f"seeds and temperatures of the cell means); best temperature per density (low to high): "
            f"{', '.join(_label(temps[b]) for b in best[np.argsort(dens)])}. Rule: both signs right (< 0 low, "
            "> 0 high) and beyond 2 standard errors = reproduced; both signs right, or one right beyond 2 SE = partly"
        ),
        verdict=verdict if testable and len(temps) >= 2 else NOT_TESTABLE,
    )

    # C3: CKA rises with density.
    rising = cka[:, hi].mean() > cka[:, lo].mean()
    record.claim(
        "Output similarity (CKA) of retrained pairs rises with density",
        paper_evidence="Fig. 2 CKA panel (about 0.88-0.90 in the cold, 5 % corner, about 0.99 at 40-80 %)",
        our_evidence=f"mean CKA at density {_label(dens[lo])}%: {cka[:, lo].mean():.3f}, at {_label(dens[hi])}%: "
        f"{cka[:, hi].mean():.3f}. Rule: higher at the highest density = reproduced",
        verdict=(REPRODUCED if rising else NOT_REPRODUCED) if testable else NOT_TESTABLE,
    )

    # C4: the regime rule picks better options than the baseline rule.
    outcomes = {}
    for name in ("direction", "selection"):
        per_seed = x["case_studies"][name]
        diff = float(np.mean([p["regime rule"]["mean"] - p["baseline (dense accuracy)"]["mean"] for p in per_seed]))
        outcomes[name] = (diff, "better" if diff < -TIE_PP else "worse" if diff > TIE_PP else "tie")
    n_better = sum(o == "better" for _, o in outcomes.values())
    n_worse = sum(o == "worse" for _, o in outcomes.values())
    verdict = REPRODUCED if n_better == 2 else PARTLY if n_better == 1 and n_worse == 0 else NOT_REPRODUCED
    record.claim(
        "The regime rule picks better options than the baseline rule (case studies 1 and 2)",
        paper_evidence="Abstract; Sections on the case studies (their numbers could not be read, paper.py)",
        our_evidence=(
            "test error reached, regime rule minus baseline (best dense accuracy), mean over dense seeds: "
            + "; ".join(f"case study {k} ({n}): {d:+.2f} pp, {o}" for k, (n, (d, o)) in
                        zip((1, 2), outcomes.items(), strict=True))
            + f". Rule: better/worse = more than {TIE_PP} pp; both better = reproduced, one better and none worse = "
            "partly"
        ),
        verdict=verdict if testable else NOT_TESTABLE,
    )  # fmt: skip
    sam = x["case_studies"]["sam"]
    if sam:
        diff = float(np.mean([p["regime rule"]["mean"] - p["baseline (dense accuracy)"]["mean"] for p in sam]))
        verdict = REPRODUCED if diff < -TIE_PP else NOT_REPRODUCED
        evidence = f"test error reached, regime walk from the default rho minus baseline: {diff:+.2f} pp"
    else:
        verdict, evidence = NOT_TESTABLE, "this run's temperature is not SAM's rho (grid.temperature=sam_rho runs it)"
    record.claim(
        "Tuning SAM's rho with the regime rule improves pruning (case study 3)",
        paper_evidence="Abstract; the SAM case study (numbers not read)",
        our_evidence=evidence + (f". Rule: better by more than {TIE_PP} pp = reproduced" if sam else ""),
        verdict=verdict,
    )


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
    for rule in RULES:
        values = [p[rule]["mean"] for p in per_seed]
        rows.append((rule, format_mean_std(values), len(values)))
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
    split = ("the median CKA of the connected cells of its density column" if rc["cka_split"] == "column_median"
             else f"CKA {rc['cka_threshold']}")  # fmt: skip
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

        parts.append("#### Claims\n\n" + claims_table(record.claims))
    return "\n\n".join(parts) + "\n"
