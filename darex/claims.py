"""The DAREx paper's claims, judged from a results record: one rule, margin and precondition per claim.

Every function here reads only the record (its measurements with their mask ids, its config and extra), so a
verdict can be re-derived from ``record.json`` and the rules can be tested on hand-made records
(``tests/darex/test_claims.py``). Verdicts follow ``common.stats``: an effect with its 95% t interval, a
decision margin, a precondition checked with its measured value, and the same claim judged on two disjoint
halves of the replication units.

**Replication unit: the random mask, or the fine-tune.** With one fine-tuning seed the independent runs are the
masks (ids ``1000 · seed + m``), split in halves A (the first half in config order) and B (the rest): the claim is
then about what a random drop does to that one fine-tuned model. With several seeds (``mini``'s collapse regime:
4, each a new task, pre-trained model and set of fine-tunes) the unit is the seed, each seed's masks averaged, so
the interval holds how much an effect varies from one fine-tune to the next (on one seed, the large-delta claim
came out not reproduced, on another reproduced, each with a tight interval over its masks); two fine-tunes of a
seed are compared paired by seed. Deterministic quantities (the unpruned model, magnitude, WANDA)
enter every mask's difference as constants. In the collapse regime q is chosen for every mask on its own, so
each mask replicates the whole procedure; in the real regime q is chosen once per model and rate (on 1,000
validation sentences, with a search mask that is not scored) and the interval is over masks given that q.

**Margins** (in points of the task metric: accuracy in %, or the metric × 100):

* :data:`COLLAPSE_MARGIN` = 5 points: the precondition of the recovery claims. DARE at p = 0.99 must lose more
  than 5 points (the whole 95% interval over the units) against its unpruned model, else there is nothing to
  recover and the claim is *not testable here*, not refuted. The paper's collapses are tens of points.
* :data:`MIN_EFFECT` = 1 point: the smallest gain (recovery, an importance method over DARE, a larger loss, an
  AdamR-L2 improvement) we count as the effect the paper describes; below it a user would not choose a method
  over another.
* :data:`PROXY_MARGIN` = 2 points: how much worse the label-free choice of q may be than the labelled one and
  still be "an excellent proxy" (Fig. 1).
* :data:`LARGER_DELTAS` = 1.5: the large-delta fine-tune must have deltas at least 1.5× as spread (std) as the
  standard one for "larger deltas" to describe it; and the deltas must carry the task (the unpruned model beats
  the one with every delta dropped by > :data:`DELTAS_MATTER` = 2 points), else no pruning claim can be tested.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.results import Measurement, RunRecord, format_mean_std, git_state, load_record, write_json_atomic
from common.stats import Effect, Judgement, Precondition, Test, difference, mean_ci, paired_difference, replicate

from .regimes import (
    DROPPED,
    LARGE,
    STANDARD,
    SYNTHETIC,
    SYNTHETIC_DROPPED,
    TEXT,
    inv_q_metric,
    l2_model,
    mask_ids,
    methods,
    model_table,
    q_table,
    rate_metric,
    reference_table,
    seed_of,
    text_regime_name,
    unpruned_setting,
    validation_metric,
)

COLLAPSE_MARGIN = 5.0
"""Points DARE at the extreme rate must lose (whole 95% interval) for the recovery claims to be testable."""
MIN_EFFECT = 1.0
"""The smallest gain, in points, that counts as the effect a claim describes."""
PROXY_MARGIN = 2.0
"""Points by which the label-free q may trail the labelled one and still be 'an excellent proxy'."""
LARGER_DELTAS = 1.5
"""How much larger (std) the large-delta fine-tune's deltas must be for the large-delta claims to apply."""
DELTAS_MATTER = 2.0
"""Points by which the unpruned model must beat the one with every delta dropped: else the deltas carry nothing."""
UNIT = "points"

MARGINS_MARKDOWN = f"""\
**DAREx's decision margins** (`darex/claims.py`; points of the task metric). The replication unit of every pruning
claim is the random mask when a regime has one fine-tuning seed, and the fine-tune (its masks averaged; differences
between two fine-tunes paired by seed) when it has several (halves A / B = the first / second half of the masks,
i.e. of the seeds); the precondition is measured over all units. *Precondition of the recovery claims (C1, C2, C5)*:
DARE at the extreme rate loses more than {COLLAPSE_MARGIN:g} points against the unpruned fine-tune (whole 95%
interval), else there is nothing to recover and they are *not testable here*. *C3* needs the same of DARE on the
large-delta fine-tune at the moderate rate, *C4* a large-delta fine-tune whose deltas are ≥ {LARGER_DELTAS:g}× as
spread (std), and deltas that carry the task (unpruned > all deltas dropped + {DELTAS_MATTER:g} points). *Margins*:
a gain must exceed {MIN_EFFECT:g} point (C1, C3, C4, C5: the smallest difference that would make a user choose one
method over another); the label-free q may trail the labelled one by less than {PROXY_MARGIN:g} points (C2).
Suffix `-mlp`: the collapse regime (synthetic MLP); `-rt`: the real regime (MiniLM on Rotten Tomatoes)."""

SUFFIX = {SYNTHETIC: "mlp", TEXT: "rt"}


@dataclass(frozen=True)
class Judged:
    """A claim ready for ``RunRecord.claim``."""

    id: str
    claim: str
    paper_evidence: str
    our_evidence: str
    judgement: Judgement


class View:
    """One regime of a record, read through the layout both regimes share (``darex.regimes``)."""

    def __init__(self, record: RunRecord, regime: str):
        self.record, self.regime = record, regime
        cfg = record.config
        self.metric = cfg["text"]["metric"] if regime == TEXT else "accuracy"
        self.seeds = list(cfg["seeds"]) if regime == TEXT else list(cfg["synthetic"].get("seeds") or cfg["seeds"])
        self.masks = mask_ids(self.seeds, cfg["prune"]["mask_seeds"])
        # With several fine-tuning seeds the unit is the fine-tune (its masks averaged): masks of one model share
        # its deltas, so an interval over them leaves out how much the effect varies from fine-tune to fine-tune.
        self.by_fine_tune = len(self.seeds) > 1
        self.p_max = cfg["prune"]["figure_rate"]
        moderate = [r for r in cfg["prune"]["large_delta_rates"] if r < self.p_max]
        self.p_moderate = max(moderate) if moderate else None
        section = cfg["finetune"] if regime == TEXT else cfg["synthetic"]
        self.lambdas = list(section["adamr_lambdas"])
        if regime == TEXT:
            self.name = f"real regime: {text_regime_name(cfg)}"
        else:
            self.name = "collapse regime: synthetic MLP"

    def _get(self, table: str, setting: str, metric: str) -> Measurement | None:
        try:
            return self.record.get(table, setting, metric)
        except KeyError:
            return None

    def unpruned(self, model: str) -> Measurement | None:
        return self._get(reference_table(self.regime), unpruned_setting(model), self.metric)

    def dropped(self) -> Measurement | None:
        """The model with every delta dropped (the pre-trained body)."""
        return self._get(reference_table(self.regime), DROPPED if self.regime == TEXT else SYNTHETIC_DROPPED,
                         self.metric)  # fmt: skip

    def pruned(self, model: str, method: str, p: float | None) -> Measurement | None:
        if p is None:
            return None
        return self._get(model_table(self.regime, model), methods(self.regime)[method], rate_metric(self.metric, p))

    def validation_dare(self, model: str, p: float) -> Measurement | None:
        return self._get(model_table(self.regime, model), methods(self.regime)["dare"],
                         validation_metric(self.metric, p))  # fmt: skip

    def inv_q(self, method: str, p: float) -> Measurement | None:
        return self._get(q_table(self.regime), methods(self.regime)[method], inv_q_metric(p))

    def delta_std(self, model: str) -> float | None:
        stats = (self.record.extra if self.regime == TEXT else self.record.extra.get("synthetic", {})).get(
            "delta_statistics", {}
        )
        runs = stats.get(model) if isinstance(stats, dict) else None
        return sum(r["std"] for r in runs) / len(runs) if runs else None

    def per_mask(self, deterministic: Measurement, masks: list[int]) -> list[float]:
        """A per-seed value (unpruned, magnitude, WANDA) repeated for each mask of that seed."""
        return [deterministic.at([seed_of(u)])[0] for u in masks]

    def loss(self, model: str, p: float, masks: list[int]) -> list[float]:
        """Unpruned minus DARE, mask by mask: what DARE at rate ``p`` loses."""
        ft, dare = self.unpruned(model), self.pruned(model, "dare", p)
        return [f - d for f, d in zip(self.per_mask(ft, masks), dare.at(masks), strict=True)]

    def units(self, values: list[float], masks: list[int]) -> list[float]:
        """Per-mask ``values`` as replication units: unchanged with one fine-tuning seed, else each seed's mean
        over its masks (in the order of ``masks``)."""
        if not self.by_fine_tune:
            return list(values)
        groups: dict[int, list[float]] = {}
        for v, u in zip(values, masks, strict=True):
            groups.setdefault(seed_of(u), []).append(v)
        return [sum(g) / len(g) for g in groups.values()]

    def mean(self, values: list[float], masks: list[int]) -> Effect:
        """The mean of per-mask ``values`` with its 95% interval over the replication units."""
        return mean_ci(self.units(values, masks))

    def paired(self, a: Measurement, b: Measurement, masks: list[int]) -> Effect:
        """``a − b`` over the same masks (both random-mask measurements)."""
        return self.mean([x - y for x, y in zip(a.at(masks), b.at(masks), strict=True)], masks)

    def between_models(self, a: list[float], b: list[float], masks: list[int]) -> Effect:
        """``mean(a) − mean(b)`` of per-mask values of two different fine-tunes: Welch over the masks with one
        seed; with several, paired by seed (both fine-tunes of a seed start from its pre-trained model)."""
        if self.by_fine_tune:
            return self.mean([x - y for x, y in zip(a, b, strict=True)], masks)
        return difference(a, b)

    @property
    def unit_text(self) -> str:
        return (
            f"{len(self.seeds)} fine-tunes × {len(self.masks) // len(self.seeds)} masks"
            if self.by_fine_tune
            else f"{len(self.masks)} masks"
        )


def _fmt(m: Measurement | None) -> str:
    return format_mean_std(m.values) if m is not None else "n/a"


def dare_loses(view: View, model: str, p: float) -> Precondition:
    """DARE at rate ``p`` loses more than :data:`COLLAPSE_MARGIN` points against the unpruned ``model``."""
    effect = view.mean(view.loss(model, p, view.masks), view.masks)
    holds = math.isfinite(effect.low) and effect.low > COLLAPSE_MARGIN
    which = "" if model == STANDARD else f" {model}"
    over = "fine-tunes" if view.by_fine_tune else "masks"
    return Precondition(
        f"DARE at p = {p} loses > {COLLAPSE_MARGIN:g} points vs the unpruned{which} fine-tune (95% CI over {over})",
        f"loss {effect.text(1)}",
        holds,
    )


def fine_tunes_replicated(view: View) -> Precondition:
    """Claims that compare two fine-tunes (C4, C5) need several of each: with one fine-tuning seed the masks say how
    a verdict varies with the drop, not with the fine-tune (the real regime's C4 gave +4.7 points with seed 0 and
    −0.3 with seed 4, each interval tight over its masks)."""
    return Precondition(
        "two fine-tunes compared: ≥ 2 fine-tuning seeds, so the interval holds the fine-tune to fine-tune spread",
        f"{len(view.seeds)} seed{'s' * (len(view.seeds) != 1)}",
        view.by_fine_tune,
    )


def _test(label: str, effect, margin: float, higher: bool = True) -> Test:
    return Test(label, effect, margin=margin, higher=higher, unit=UNIT, digits=2)


# ----------------------------------------------------------------------------------------------------
# The claims (each returns None where the record lacks what it needs, e.g. a preset without p = 0.99)


def recovery(view: View) -> Judged | None:
    """C1: DAREx-q (q chosen on labelled validation data) beats DARE at the extreme rate by > MIN_EFFECT."""
    p = view.p_max
    ft, dare, darex = (
        view.unpruned(STANDARD),
        view.pruned(STANDARD, "dare", p),
        view.pruned(STANDARD, "darex_q_labelled", p),
    )
    if not (ft and dare and darex):
        return None

    def evaluate(masks: list[int]) -> list[Test]:
        return [_test(f"DAREx-q − DARE, p = {p}", view.paired(darex, dare, masks), MIN_EFFECT)]

    inv_q = view.inv_q("darex_q_labelled", p)
    return Judged(
        "C1",
        f"DAREx-q recovers the accuracy DARE loses at p = {p}",
        "Abstract; Table 1: DAREx-q improves on DARE by > 30% at extreme rates on CoLA/SST-2 (numbers not read)",
        f"unpruned {_fmt(ft)}; DARE {_fmt(dare)}; DAREx-q (labelled q, 1/q {_fmt(inv_q)}) {_fmt(darex)}; "
        f"{view.unit_text}",
        replicate(evaluate, view.masks, dare_loses(view, STANDARD, p)),
    )


def label_free_proxy(view: View) -> Judged | None:
    """C2: the label-free q (last-layer output change) trails the labelled one by < PROXY_MARGIN."""
    p = view.p_max
    labelled, free = view.pruned(STANDARD, "darex_q_labelled", p), view.pruned(STANDARD, "darex_q_unlabelled", p)
    if not (labelled and free and view.pruned(STANDARD, "dare", p) and view.unpruned(STANDARD)):
        return None

    def evaluate(masks: list[int]) -> list[Test]:
        effect = view.paired(labelled, free, masks)
        return [_test(f"labelled − label-free q, p = {p}", effect, PROXY_MARGIN, higher=False)]

    inv_l, inv_f = view.inv_q("darex_q_labelled", p), view.inv_q("darex_q_unlabelled", p)
    return Judged(
        "C2",
        "Choosing q without labels (last-layer output change) is nearly as good as choosing it on labels",
        "Fig. 1 (left): the q minimising the last layer's output change is 'an excellent proxy' for the best q",
        f"p = {p}: labelled {_fmt(labelled)} (1/q {_fmt(inv_l)}); label-free {_fmt(free)} (1/q {_fmt(inv_f)})",
        replicate(evaluate, view.masks, dare_loses(view, STANDARD, p)),
    )


def importance_on_large_deltas(view: View) -> Judged | None:
    """C3: on the large-delta fine-tune at the moderate rate, magnitude and WANDA each beat DARE by > MIN_EFFECT."""
    p = view.p_moderate
    dare = view.pruned(LARGE, "dare", p)
    parts = {name: view.pruned(LARGE, name, p) for name in ("magnitude", "wanda")}
    if not (dare and view.unpruned(LARGE) and all(parts.values())):
        return None

    def evaluate(masks: list[int]) -> list[Test]:
        tests = []
        for name, m in parts.items():
            gains = [i - d for i, d in zip(view.per_mask(m, masks), dare.at(masks), strict=True)]
            tests.append(_test(f"{name} − DARE (large deltas, p = {p})", view.mean(gains, masks), MIN_EFFECT))
        return tests

    return Judged(
        "C3",
        f"On large deltas, importance-based pruning (magnitude, WANDA on deltas) beats DARE at p = {p}",
        "§5 / Table 6: when the deltas are large, importance-based DPP beats DARE (numbers not read)",
        f"large-delta fine-tune: unpruned {_fmt(view.unpruned(LARGE))}; DARE {_fmt(dare)}; magnitude "
        f"{_fmt(parts['magnitude'])}; WANDA {_fmt(parts['wanda'])}",
        replicate(evaluate, view.masks, dare_loses(view, LARGE, p)),
    )


def larger_deltas_lose_more(view: View) -> Judged | None:
    """C4: DARE's loss at the extreme rate is larger on the large-delta fine-tune (Welch, > MIN_EFFECT)."""
    p = view.p_max
    needed = (view.unpruned(STANDARD), view.unpruned(LARGE), view.pruned(STANDARD, "dare", p),
              view.pruned(LARGE, "dare", p))  # fmt: skip
    std_s, std_l = view.delta_std(STANDARD), view.delta_std(LARGE)
    if not all(needed) or not std_s or std_l is None:
        return None
    ratio = std_l / std_s

    def evaluate(masks: list[int]) -> list[Test]:
        effect = view.between_models(view.loss(LARGE, p, masks), view.loss(STANDARD, p, masks), masks)
        return [_test(f"DARE's loss at p = {p}: large-delta − standard", effect, MIN_EFFECT)]

    matter = view.unpruned(STANDARD).mean - view.dropped().mean if view.dropped() else math.inf
    pre = Precondition(
        f"large-delta deltas ≥ {LARGER_DELTAS:g}× as spread (std) as the standard ones, and deltas that carry the "
        f"task (unpruned − all dropped > {DELTAS_MATTER:g} points)",
        f"×{ratio:.2f}; {matter:+.1f} points",
        ratio >= LARGER_DELTAS and matter > DELTAS_MATTER,
    )
    loss_s, loss_l = (view.mean(view.loss(m, p, view.masks), view.masks) for m in (STANDARD, LARGE))
    return Judged(
        "C4",
        f"Larger deltas make DARE lose more at p = {p}",
        "§3, Theorem 3.1: the bound on the output change grows with the deltas' mean and variance",
        f"delta std ×{ratio:.2f}; DARE loses {loss_l.estimate:.1f} points on the large-delta fine-tune "
        f"(unpruned {_fmt(view.unpruned(LARGE))}) vs {loss_s.estimate:.1f} on the standard one",
        replicate(evaluate, view.masks, Precondition.all(fine_tunes_replicated(view), pre)),
    )


def chosen_lambda(view: View) -> tuple[float, str] | None:
    """The AdamR-L2 strength used: the only one, or the one whose DARE scores best on *validation* data."""
    if len(view.lambdas) == 1:
        return view.lambdas[0], "the only λ"
    scored = {lam: view.validation_dare(l2_model(lam), view.p_max) for lam in view.lambdas}
    if not all(scored.values()):
        return None
    best = max(view.lambdas, key=lambda lam: (scored[lam].mean, -view.lambdas.index(lam)))
    return best, "chosen on validation (DARE at p = {:g}: {})".format(
        view.p_max, ", ".join(f"λ={lam} {scored[lam].mean:.1f}" for lam in view.lambdas)
    )


def adamr_l2(view: View) -> Judged | None:
    """C5: DARE at the extreme rate scores higher after AdamR-L2 fine-tuning than after AdamW/Adam (> MIN_EFFECT)."""
    p, choice = view.p_max, chosen_lambda(view)
    if choice is None:
        return None
    lam, how = choice
    l2, dare = view.pruned(l2_model(lam), "dare", p), view.pruned(STANDARD, "dare", p)
    if not (l2 and dare and view.unpruned(STANDARD) and view.unpruned(l2_model(lam))):
        return None

    def evaluate(masks: list[int]) -> list[Test]:
        effect = view.between_models(l2.at(masks), dare.at(masks), masks)
        return [_test(f"DARE at p = {p}: AdamR-L2 − standard fine-tune", effect, MIN_EFFECT)]

    return Judged(
        "C5",
        f"AdamR-L2 fine-tuning makes the deltas more prunable: DARE at p = {p} scores higher",
        "Table 1: DAREx-L2 (AdamR-L2 fine-tuning, then DARE) > 35% over DARE on CoLA/SST-2 (numbers not read)",
        f"λ = {lam} ({how}): unpruned {_fmt(view.unpruned(l2_model(lam)))}, DARE {_fmt(l2)}; standard fine-tune: "
        f"unpruned {_fmt(view.unpruned(STANDARD))}, DARE {_fmt(dare)}",
        replicate(evaluate, view.masks, Precondition.all(fine_tunes_replicated(view), dare_loses(view, STANDARD, p))),
    )


CLAIMS: tuple[Callable[[View], Judged | None], ...] = (
    recovery,
    label_free_proxy,
    importance_on_large_deltas,
    larger_deltas_lose_more,
    adamr_l2,
)


def judge(record: RunRecord) -> list[Judged]:
    """Every claim in every regime of ``record`` (collapse regime first), ids suffixed by regime."""
    regimes = [r for r in (SYNTHETIC, TEXT) if r in record.extra.get("regimes", [])]
    views = [View(record, r) for r in regimes]
    out = []
    for rule in CLAIMS:
        for view in views:
            judged = rule(view)
            if judged is not None:
                out.append(
                    Judged(
                        f"{judged.id}-{SUFFIX[view.regime]}",
                        f"{judged.claim} ({view.name})",
                        judged.paper_evidence,
                        judged.our_evidence,
                        judged.judgement,
                    )
                )
    return out


def add_claims(record: RunRecord) -> None:
    for j in judge(record):
        record.claim(j.claim, paper_evidence=j.paper_evidence, our_evidence=j.our_evidence, judgement=j.judgement,
                     id=j.id)  # fmt: skip


def rejudge(path: Path, why: str) -> RunRecord:
    """Judge a saved record's claims again by today's rules (they read only the record, so no re-run is needed)
    and save it, saying in ``extra["claims_rejudged"]`` at which commit and why; measurements and provenance stay
    as the run wrote them. ``python -m darex.claims RECORD.json... --why "..."``."""
    record = load_record(path)
    if not record.extra.get("regimes"):
        raise ValueError(f"{path}: only records of the text/synthetic experiments are judged by these rules")
    record.claims = []
    add_claims(record)
    record.extra["claims_rejudged"] = {"commit": git_state().get("git_commit"), "why": why}
    write_json_atomic(Path(path), record.to_json())
    return record


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m darex.claims", description=rejudge.__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", type=Path, help="record.json files to judge again (rewritten)")
    parser.add_argument("--why", required=True, help="the rule change, saved in the record")
    args = parser.parse_args()
    for path in args.records:
        print(f"{path}: " + ", ".join(f"{c.id} {c.verdict}" for c in rejudge(path, args.why).claims))


# ----------------------------------------------------------------------------------------------------
# The decoder experiment (paper preset): the recovery claim on GSM8K, over its mask seeds


def decoder_recovery(record: RunRecord) -> Judged:
    from .decoder import DECODER_REFS, DECODER_TABLE
    from .decoder import METHODS as DECODER_METHODS

    p = max(record.config["prune"]["rates"])
    ft = record.get(DECODER_REFS, "fine-tuned (unpruned)", "accuracy")
    dare = record.get(DECODER_TABLE, DECODER_METHODS["dare"], f"accuracy, p={p}")
    darex = record.get(DECODER_TABLE, DECODER_METHODS["labelled"], f"accuracy, p={p}")
    masks = list(dare.seeds)
    loss = mean_ci([ft.values[0] - d for d in dare.values])
    pre = Precondition(f"DARE at p = {p} loses > {COLLAPSE_MARGIN:g} points vs the unpruned model (95% CI)",
                       f"loss {loss.text(1)}", math.isfinite(loss.low) and loss.low > COLLAPSE_MARGIN)  # fmt: skip

    def evaluate(seeds: list[int]) -> list[Test]:
        return [_test(f"DAREx-q − DARE, p = {p}", paired_difference(darex.at(seeds), dare.at(seeds)), MIN_EFFECT)]

    return Judged(
        "C1-decoder",
        f"On a decoder, DAREx-q (global q) recovers the accuracy DARE loses at p = {p}",
        "§5: 'even greater gains in decoder models' (Table 3; numbers not read)",
        f"unpruned {ft.values[0]:.2f}; DARE {_fmt(dare)}; DAREx-q {_fmt(darex)}; {len(masks)} mask(s), q chosen "
        "with the first",
        replicate(evaluate, masks, pre),
    )
