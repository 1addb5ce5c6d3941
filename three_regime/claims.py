"""The paper's claims as rules on a results record: pure functions from the record to judged claims.

``reproduce.py`` runs the grid and writes the record; :func:`add_claims` reads it back (the per-seed grids in
``record.extra["per_seed"]``, indexed [dense seed, temperature (hot first), density]; the case-study
measurements, one value per dense seed; the config) and appends claims C1-C6, each judged by
:func:`common.stats.replicate` on all dense seeds and on two disjoint halves of them. The unit of replication
is the **dense seed**: everything in one seed's grid comes from its own dense run, pruned models and
retrainings, so the seeds are independent; the retraining seeds inside a cell are averaged first.

Groups the rules use:

* **trained checkpoints**: dense checkpoints whose test accuracy (mean over the dense seeds) reaches
  ``claims.min_dense_accuracy``. Under-trained ones are left out of C1-C3 and named in the precondition
  (an under-trained model is not "hot", it is unfinished: with 4,000 MNIST-1D examples the epoch-10
  checkpoint had 36% dense test error against 23-24% at epochs 40-60).
* **hot / cold**: with temperature = training epochs and an epoch schedule, the checkpoints taken while the
  learning rate is still at its initial value are hot and those after the first decay are cold (the
  official schedule decays at epoch 80 of 160; ``mini``'s at 30 of 60). Otherwise the hotter and the colder
  half of the temperatures (the middle one of an odd number in neither).
* **low / high densities**: the lower and the upper half of the densities (the middle one of an odd number in
  neither), so with four or more densities no claim rests on one column alone.
* The case studies (C4-C6) use the whole grid: the baseline never picks an under-trained dense model, and
  whether the regime rule does is part of what they test.

Decision margins (the minimum effect of interest, in each metric's unit):

* mc: ``regime.mc_barrier`` (0.02 of training error in every preset): the depth of barrier that defines
  Regime I in our regime map. A level or a difference smaller than that would not move a cell across the
  I/II boundary, so it is not evidence for or against a regime.
* test error: 0 pp. The paper claims signs (which way to move the temperature), not sizes.
* CKA: ``regime.cka_margin``: the smallest CKA difference the regime split itself treats as real.
* case studies: 0 pp (the regime rule should reach a lower test error than the baseline), and a claim is
  testable only where the oracle beats the baseline (the 95% interval of baseline - oracle lies above 0):
  where no choice beats the baseline, no rule can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.results import NOT_TESTABLE, RunRecord
from common.stats import Precondition, Test, mean_ci, paired_difference, replicate

from . import method

CASE_TABLES = {
    "direction": "Case study 1: which way to move the temperature",
    "selection": "Case study 2: which dense model to prune",
    "sam": "Case study 3: tuning SAM's rho",
}
RULES = ("regime rule", "baseline (dense accuracy)", "oracle")
CASE_METRIC = "mean test error reached"
TEST_ERROR_MARGIN_PP = 0.0
"""C2, C4-C6: the paper claims directions (hotter or colder is better; the rule beats the baseline), not sizes."""


def _label(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------------------------------
# Groups of the grid


@dataclass(frozen=True)
class Groups:
    """Which rows (temperatures, hot first) and columns (densities) of a record's grid each rule uses."""

    temps: list[float]
    densities: list[float]
    accuracy: list[float]
    """Dense test accuracy (%) of each checkpoint, mean over the dense seeds."""
    min_accuracy: float
    trained: list[int]
    excluded: list[int]
    hot: list[int]
    cold: list[int]
    hot_cold_by: str
    low: list[int]
    high: list[int]

    def names(self, rows: Sequence[int], with_accuracy: bool = False) -> str:
        if not rows:
            return "none"
        if with_accuracy:
            return ", ".join(f"{_label(self.temps[i])} ({self.accuracy[i]:.1f}%)" for i in rows)
        return ", ".join(_label(self.temps[i]) for i in rows)

    def density_names(self, cols: Sequence[int]) -> str:
        return ", ".join(f"{_label(self.densities[j])}%" for j in cols) or "none"


def _halves(order: Sequence[int]) -> tuple[list[int], list[int]]:
    """The first and the last ``len // 2`` items (the middle one of an odd number in neither)."""
    k = len(order) // 2
    return list(order[:k]), list(order[len(order) - k :])


def _hot_cold(config: dict[str, Any], temps: Sequence[float], rows: Sequence[int]) -> tuple[list[int], list[int], str]:
    train = config.get("train", {})
    if config.get("grid", {}).get("temperature") == "training_epochs" and not train.get("iterations"):
        first_decay = min(train.get("lr_decay_at") or (1.0,))
        epochs = train["epochs"]
        # train.py: epoch e runs at the initial lr iff (e - 1) / epochs < the first decay fraction
        hot = [i for i in rows if (temps[i] - 1) / epochs < first_decay]
        cold = [i for i in rows if i not in hot]
        if hot and cold:
            return hot, cold, f"hot = at the initial lr, before the decay after epoch {first_decay * epochs:g}"
    hot, cold = _halves(list(rows))
    return hot, cold, "the hotter and the colder half of the axis"


def groups(record: RunRecord) -> Groups:
    x, config = record.extra, record.config
    temps, dens = list(x["temps"]), list(x["densities"])
    accuracy = (100.0 - np.asarray(x["per_seed"]["dense_test_error"], dtype=float).mean(0)).tolist()
    min_accuracy = float(config.get("claims", {}).get("min_dense_accuracy", 0.0))
    trained = [i for i in range(len(temps)) if accuracy[i] >= min_accuracy]
    excluded = [i for i in range(len(temps)) if i not in trained]
    hot, cold, how = _hot_cold(config, temps, trained)
    low, high = _halves(sorted(range(len(dens)), key=lambda j: dens[j]))
    return Groups(temps, dens, accuracy, min_accuracy, trained, excluded, hot, cold, how, low, high)


def trained_precondition(g: Groups, need_hot_and_cold: bool = True) -> Precondition:
    """C1, C2: a trained hot and a trained cold checkpoint (C3: a trained one), and low and high densities."""
    trained = f"dense test accuracy >= {g.min_accuracy:g}%, mean over seeds" if g.min_accuracy > 0 else "all"
    if need_hot_and_cold:
        text = f"trained checkpoints ({trained}), hot and cold"
        value = f"hot {g.names(g.hot, True)}; cold {g.names(g.cold, True)}"
        holds = bool(g.hot and g.cold)
    else:
        text = f"trained checkpoints ({trained})"
        value = g.names(g.trained, True)
        holds = bool(g.trained)
    value += f"; excluded {g.names(g.excluded, True)}" + ("" if g.low and g.high else "; fewer than 2 densities")
    return Precondition(text, value, holds and bool(g.low and g.high))


# ----------------------------------------------------------------------------------------------------
# Per-seed summaries


def _grid(record: RunRecord, key: str, seeds: Sequence[int]) -> np.ndarray:
    index = {s: i for i, s in enumerate(record.seeds)}
    return np.asarray(record.extra["per_seed"][key], dtype=float)[[index[s] for s in seeds]]


def _block_mean(values: np.ndarray, rows: Sequence[int], cols: Sequence[int]) -> list[float]:
    """Per seed, the mean over the block ``rows x cols`` of a [seed, temperature, density] grid."""
    return values[:, list(rows)][:, :, list(cols)].mean(axis=(1, 2)).tolist()


def _case(record: RunRecord, study: str, rule: str, seeds: Sequence[int]) -> list[float]:
    return record.get(CASE_TABLES[study], rule, CASE_METRIC).at(seeds)


# ----------------------------------------------------------------------------------------------------
# The claims


def _judge(record: RunRecord, evaluate: Callable[[list[int]], list[Test]], precondition: Precondition):
    return replicate(evaluate, seeds=record.seeds, precondition=precondition)


def claim_regime_one(record: RunRecord, g: Groups):
    """C1: Regime I (a barrier, mc < -eps) at low density, none at high density, deeper at low temperature."""
    eps = float(record.config["regime"]["mc_barrier"])

    def evaluate(seeds: list[int]) -> list[Test]:
        mc = _grid(record, "mc", seeds)
        return [
            Test(f"mc at {g.density_names(g.low)}", mean_ci(_block_mean(mc, g.trained, g.low)), margin=-eps,
                 higher=False, digits=3),
            Test(f"mc at {g.density_names(g.high)}", mean_ci(_block_mean(mc, g.trained, g.high)), margin=-eps,
                 digits=3),
            Test(f"mc cold - hot at {g.density_names(g.low)}",
                 paired_difference(_block_mean(mc, g.cold, g.low), _block_mean(mc, g.hot, g.low)), margin=-eps,
                 higher=False, digits=3),
        ]  # fmt: skip

    return _judge(record, evaluate, trained_precondition(g))


def claim_dichotomy(record: RunRecord, g: Groups):
    """C2: test error, hot - cold: below 0 at low densities, above 0 at high densities."""

    def evaluate(seeds: list[int]) -> list[Test]:
        te = _grid(record, "test_error", seeds)
        diff = lambda cols: paired_difference(_block_mean(te, g.hot, cols), _block_mean(te, g.cold, cols))  # noqa: E731
        return [
            Test(f"test error hot - cold at {g.density_names(g.low)}", diff(g.low), margin=TEST_ERROR_MARGIN_PP,
                 higher=False, unit="pp"),
            Test(f"test error hot - cold at {g.density_names(g.high)}", diff(g.high), margin=TEST_ERROR_MARGIN_PP,
                 unit="pp"),
        ]  # fmt: skip

    return _judge(record, evaluate, trained_precondition(g))


def claim_cka_rises(record: RunRecord, g: Groups):
    """C3: CKA at high densities - CKA at low densities > regime.cka_margin."""
    margin = float(record.config["regime"].get("cka_margin", 0.0))

    def evaluate(seeds: list[int]) -> list[Test]:
        cka = _grid(record, "cka", seeds)
        effect = paired_difference(_block_mean(cka, g.trained, g.high), _block_mean(cka, g.trained, g.low))
        return [Test(f"CKA {g.density_names(g.high)} - {g.density_names(g.low)}", effect, margin=margin, digits=3)]

    return _judge(record, evaluate, trained_precondition(g, need_hot_and_cold=False))


def headroom_precondition(record: RunRecord, study: str) -> Precondition:
    """The oracle beats the baseline: the 95% interval of baseline - oracle (test error reached) is above 0."""
    seeds = record.seeds
    headroom = paired_difference(_case(record, study, RULES[1], seeds), _case(record, study, RULES[2], seeds))
    return Precondition(
        "room to pick better than the baseline: baseline - oracle, 95% interval above 0",
        headroom.text(2, "pp"),
        bool(np.isfinite(headroom.low) and headroom.low > 0),
    )


def claim_case_study(record: RunRecord, study: str):
    """C4-C6: regime rule - baseline (test error reached, pp) < 0, where the oracle beats the baseline."""

    def evaluate(seeds: list[int]) -> list[Test]:
        effect = paired_difference(_case(record, study, RULES[0], seeds), _case(record, study, RULES[1], seeds))
        return [Test("regime rule - baseline", effect, margin=TEST_ERROR_MARGIN_PP, higher=False, unit="pp")]

    return _judge(record, evaluate, headroom_precondition(record, study))


# ----------------------------------------------------------------------------------------------------
# Into the record


def _untestable(record: RunRecord, pre: Precondition, **claim: str) -> None:
    evidence = claim.pop("our_evidence")
    record.claim(**claim, our_evidence=f"{evidence} Not testable: {pre.describe()}", verdict=NOT_TESTABLE)


def add_claims(record: RunRecord) -> None:
    """Append claims C1-C6 to ``record`` (its measurements and ``extra`` must be complete)."""
    x = record.extra
    g = groups(record)
    rc = record.config["regime"]
    eps = rc["mc_barrier"]
    regimes = np.asarray(x["regimes"], dtype=object)
    where_i = [f"({_label(g.temps[i])}, {_label(g.densities[j])}%)" for i, j in np.argwhere(regimes == method.REGIME_I)]
    hot_cold = (f"Hot: {g.names(g.hot)}; cold: {g.names(g.cold)} ({g.hot_cold_by}). Low density: "
                f"{g.density_names(g.low)}; high: {g.density_names(g.high)}.")  # fmt: skip
    exclusion = f" Excluded as under-trained: {g.names(g.excluded, True)}." if g.excluded else ""
    pre = trained_precondition(g)

    c1 = dict(
        id="C1",
        claim="Regime I (an error barrier on the line between two retrainings, mc < 0) appears at low density and "
        "low temperature",
        paper_evidence="Fig. 1 (schematic), Fig. 2 LMC panel: mc << 0 only for density <= ~10 % and epochs >= ~90",
        our_evidence=(
            f"Per dense seed, mc over the trained checkpoints and the retraining pairs: (1) < -{eps} at low density, "
            f"(2) > -{eps} at high density, (3) at low density, cold below hot by more than {eps} (margin: the "
            f"barrier that defines Regime I). {hot_cold}{exclusion} Regime I cells, seed-averaged map "
            f"(temperature, density): {', '.join(where_i) or 'none'}."
        ),
    )
    if pre.holds:
        record.claim(**c1, judgement=claim_regime_one(record, g))
    else:
        _untestable(record, pre, **c1)

    te = np.asarray(x["mean"]["test_error"])
    best = te.argmin(0)
    c2 = dict(
        id="C2",
        claim="Dichotomy: at low density a hotter dense model prunes better, at high density it prunes worse",
        paper_evidence="Abstract, Fig. 1; Fig. 2 (normalised test error): favourable I -> II-A by raising and "
        "II-A -> II-B by lowering the temperature",
        our_evidence=(
            f"Per dense seed, retrained test error of the hot minus the cold checkpoints: < 0 at low density, "
            f"> 0 at high density (margin 0: the claim is a direction). {hot_cold}{exclusion} Best temperature "
            f"per density, seed-averaged (low to high density): "
            f"{', '.join(_label(g.temps[best[j]]) for j in np.argsort(g.densities))}."
        ),
    )
    if pre.holds:
        record.claim(**c2, judgement=claim_dichotomy(record, g))
    else:
        _untestable(record, pre, **c2)

    pre3 = trained_precondition(g, need_hot_and_cold=False)
    cka = np.asarray(x["mean"]["cka"])
    c3 = dict(
        id="C3",
        claim="Output similarity (CKA) of retrained pairs rises with density",
        paper_evidence="Fig. 2 CKA panel (about 0.88-0.90 in the cold, 5 % corner, about 0.99 at 40-80 %)",
        our_evidence=(
            f"Per dense seed, CKA at high minus low density over the trained checkpoints: > "
            f"{rc.get('cka_margin', 0.0):g} (regime.cka_margin, the smallest CKA difference the regime split "
            f"counts). Seed-averaged CKA per density (low to high): "
            f"{', '.join(f'{v:.3f}' for v in cka.mean(0)[np.argsort(g.densities)])}.{exclusion}"
        ),
    )
    if pre3.holds:
        record.claim(**c3, judgement=claim_cka_rises(record, g))
    else:
        _untestable(record, pre3, **c3)

    studies = [
        ("C4", "direction", "The regime rule picks the better direction for the temperature (case study 1)",
         "Abstract; the case study on increasing or decreasing a hyperparameter (numbers not read, paper.py)",
         "From every cell, one step hotter / stay / colder"),
        ("C5", "selection", "The regime rule picks the better dense model to prune (case study 2)",
         "Abstract; the model-selection case study (numbers not read, paper.py)",
         "Per density, one dense model of the temperature axis"),
        ("C6", "sam", "Tuning SAM's rho with the regime rule improves pruning (case study 3)",
         "Abstract; the SAM case study (numbers not read, paper.py)",
         "Per density, a walk from the default rho by the regime rule"),
    ]  # fmt: skip
    for cid, study, text, paper, how in studies:
        claim = dict(id=cid, claim=text, paper_evidence=paper)
        if not x["case_studies"].get(study):
            record.claim(**claim, our_evidence="This run's temperature is not SAM's rho (grid.temperature=sam_rho "
                         "runs it).", verdict=NOT_TESTABLE)  # fmt: skip
            continue
        evidence = (f"{how}; per dense seed (regimes from that seed's grid), test error reached by the regime rule "
                    "minus the baseline (best dense accuracy): < 0 (margin 0: any gain counts). Testable only where "
                    "the oracle (the best option) beats the baseline.")  # fmt: skip
        record.claim(**claim, our_evidence=evidence, judgement=claim_case_study(record, study))
