"""Effects with 95% intervals, and the one verdict vocabulary every paper's claims use.

A claim is judged on an **effect**: a difference between two arms (paired by seed, or not), a single mean,
or a drop, in the unit of its metric, with a 95% interval. The claim says on which side of a **decision
margin** the effect should lie ("MaskSparsity beats the control by more than 0": ``margin=0, higher=True``;
"pruning loses no more than 1 point": the drop with ``margin=1, higher=False``)::

    test = Test("MaskSparsity - control, after fine-tuning", paired_difference(ms, control), margin=0.0)
    test.verdict                      # reproduced: the whole interval is above 0
    judgement = replicate(lambda seeds: [Test(...)], seeds=[0, 1, 2, 3, 4, 5], precondition=pre)
    record.claim("C3", "...", paper_evidence="...", our_evidence="...", judgement=judgement)

Each part of a claim is one :class:`Test`; a claim with several parts combines them with :func:`combine`.
:func:`replicate` judges the claim on all seeds and on two disjoint halves of them (A: the first half of the
seeds in config order, B: the rest), so the table shows whether the verdict survives a re-run with other
seeds. :data:`RULES_MARKDOWN` states the rules once for every card.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable here"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)

CONFIDENCE = 0.95

RULES_MARKDOWN = """\
**How verdicts are decided** (one rule set for all five papers, `common/stats.py`). Each claim is tested on an
*effect* (a difference between two arms, paired by seed where the arms share seeds, Welch's unpaired difference
otherwise, or a single mean), with its 95% *t* interval over the n independent runs (seeds, masks or images, as
stated). The claim names a *decision margin* and the side the effect should fall on. **reproduced**: the whole
interval is on the claim's side of the margin; **not reproduced**: the whole interval is on the other side;
**inconclusive**: the interval contains the margin (too little evidence either way); **partly reproduced**: a
claim with several parts, some reproduced and some not; **not testable here**: the claim's stated precondition
fails at our scale (its measured value is shown). **Replication**: every claim is also judged on two disjoint
halves of the seeds (A: the first half in the config's order, B: the rest). The combined verdict is the verdict
on all seeds, except that it is **inconclusive** when the halves contradict each other (one reproduced and the
other not reproduced) or when a half's estimate lies on the other side of the margin from the combined one.
With few runs per half, a half is often inconclusive on its own; that is not a contradiction."""


# ----------------------------------------------------------------------------------------------------
# Effects


@dataclass(frozen=True)
class Effect:
    """A point estimate with its two-sided interval (``low``/``high`` are infinite when n is too small)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    """How the interval was computed: "paired t", "Welch t", "one-sample t", "single value"."""

    def text(self, digits: int = 2, unit: str = "") -> str:
        """``"+1.23 [+0.41, +2.05] pp"``; an undefined interval reads ``[n/a]``. A negative ``digits`` writes
        the numbers in scientific notation with ``-digits`` decimals (``"+6.1e-15 [+6.1e-15, +6.1e-15]"``), for
        effects near float rounding."""
        u = f" {unit}" if unit else ""
        f = _number_format(digits)
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.estimate:{f}} [interval n/a, n={self.n}]{u}"
        return f"{self.estimate:{f}} [{self.low:{f}}, {self.high:{f}}]{u}"

    def to_json(self) -> dict[str, Any]:
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 (JSON has no infinity)
        return {"estimate": finite(self.estimate), "low": finite(self.low), "high": finite(self.high),
                "n": self.n, "method": self.method}  # fmt: skip


def _number_format(digits: int) -> str:
    """A signed format spec: fixed point with ``digits`` decimals, scientific with ``-digits`` when negative."""
    return f"+.{digits}f" if digits >= 0 else f"+.{-digits}e"


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("an effect needs at least one value")
    return x


def _t_interval(mean: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    if not df > 0 or not math.isfinite(se):
        return -math.inf, math.inf
    half = float(_st.t.ppf(0.5 + confidence / 2, df)) * se
    return mean - half, mean + half


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Effect:
    """The mean of independent values with its t interval (one value: an undefined interval)."""
    x = _values(values)
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return Effect(mean, -math.inf, math.inf, n, "single value")
    se = float(x.std(ddof=1)) / math.sqrt(n)
    return Effect(mean, *_t_interval(mean, se, n - 1, confidence), n, "one-sample t")


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Effect:
    """``mean(a - b)`` over pairs (the same seed in both arms), with the t interval of the differences."""
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise ValueError(f"paired difference of {x.size} and {y.size} values; pair them by seed first")
    e = mean_ci(x - y, confidence)
    return Effect(e.estimate, e.low, e.high, e.n, "paired t" if e.n > 1 else e.method)


def difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Effect:
    """``mean(a) - mean(b)`` of independent samples, with Welch's t interval (unequal variances)."""
    x, y = _values(a), _values(b)
    est = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Effect(est, -math.inf, math.inf, min(x.size, y.size), "single value")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom (pooled df when both samples are constant)
    df = float(x.size + y.size - 2) if se == 0.0 else (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    return Effect(est, *_t_interval(est, se, df, confidence), min(x.size, y.size), "Welch t")


# ----------------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Test:
    """One part of a claim: ``effect`` should lie above (``higher``) or below ``margin``."""

    __test__ = False  # not a pytest test class

    label: str
    effect: Effect
    margin: float = 0.0
    higher: bool = True
    unit: str = ""
    digits: int = 2

    def _side(self, value: float) -> int:
        """+1 on the claim's side of the margin, -1 on the other, 0 on it."""
        d = value - self.margin if self.higher else self.margin - value
        return 0 if d == 0 else (1 if d > 0 else -1)

    @property
    def leaning(self) -> int:
        """Which side of the margin the point estimate is on (+1: the claim's side)."""
        return self._side(self.effect.estimate)

    @property
    def verdict(self) -> str:
        lo, hi = self._side(self.effect.low), self._side(self.effect.high)
        if lo > 0 and hi > 0:
            return REPRODUCED
        if lo < 0 and hi < 0:
            return NOT_REPRODUCED
        return INCONCLUSIVE

    def text(self) -> str:
        side = ">" if self.higher else "<"
        margin = f"{self.margin:+g}" if self.digits >= 0 else f"{self.margin:{_number_format(self.digits)}}"
        return f"{self.label}: {self.effect.text(self.digits, self.unit)} (claim: {side} {margin})"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "effect": self.effect.to_json(), "margin": self.margin, "higher": self.higher,
                "unit": self.unit, "verdict": self.verdict}  # fmt: skip


def combine(verdicts: Sequence[str]) -> str:
    """The verdict of a claim made of several parts.

    All parts reproduced: reproduced. Some reproduced and some not: partly reproduced. None reproduced and at
    least one not (the others inconclusive): not reproduced, since a claim of several parts is a conjunction.
    Reproduced parts with inconclusive ones: inconclusive. A part that is not testable makes the claim not
    testable.
    """
    vs = set(verdicts)
    if not vs:
        raise ValueError("combine() of no verdicts")
    unknown = vs - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}")
    if NOT_TESTABLE in vs:
        return NOT_TESTABLE
    some_yes = REPRODUCED in vs or PARTLY in vs
    some_no = NOT_REPRODUCED in vs or PARTLY in vs
    if some_yes and some_no:
        return PARTLY
    if vs == {REPRODUCED}:
        return REPRODUCED
    if some_no:
        return NOT_REPRODUCED  # a part failed and none held: the claim, a conjunction, fails
    return INCONCLUSIVE


@dataclass(frozen=True)
class Precondition:
    """What must hold at our scale for the claim to be testable, with the value we measured."""

    text: str
    """e.g. ``"dense test accuracy >= 40%"``."""
    value: str
    """The measured value, formatted: ``"84.6%"``."""
    holds: bool

    def describe(self) -> str:
        return f"{self.text}: {self.value} ({'holds' if self.holds else 'fails'})"

    @staticmethod
    def all(*preconditions: Precondition) -> Precondition:
        """Several preconditions as one that holds when all hold. Each part keeps its measured value; the parts
        that hold come first, so the one overall "(fails)" lands on a failing part (earlier failing parts say so)."""
        ordered = [p for p in preconditions if p.holds] + [p for p in preconditions if not p.holds]
        *first, last = ordered
        parts = [f"{p.text}: {p.value}" + ("" if p.holds else " (fails)") for p in first]
        return Precondition("; ".join([*parts, last.text]), last.value, all(p.holds for p in preconditions))


@dataclass
class Judgement:
    """A claim judged on all seeds and on two disjoint halves of them."""

    tests: list[Test]
    tests_a: list[Test] = field(default_factory=list)
    tests_b: list[Test] = field(default_factory=list)
    seeds_a: list[int] = field(default_factory=list)
    seeds_b: list[int] = field(default_factory=list)
    precondition: Precondition | None = None

    @property
    def verdict_all(self) -> str:
        return self._testable(combine([t.verdict for t in self.tests]))

    @property
    def verdict_a(self) -> str:
        return self._testable(combine([t.verdict for t in self.tests_a])) if self.tests_a else ""

    @property
    def verdict_b(self) -> str:
        return self._testable(combine([t.verdict for t in self.tests_b])) if self.tests_b else ""

    def _testable(self, verdict: str) -> str:
        return NOT_TESTABLE if self.precondition is not None and not self.precondition.holds else verdict

    @property
    def contradiction(self) -> str:
        """Why the halves disagree with each other or with all seeds ("" when they do not)."""
        if not (self.tests_a and self.tests_b):
            return ""
        definite = {REPRODUCED, NOT_REPRODUCED}
        va, vb = combine([t.verdict for t in self.tests_a]), combine([t.verdict for t in self.tests_b])
        if va in definite and vb in definite and va != vb:
            return f"half A is {va}, half B is {vb}"
        for full, a, b in zip(self.tests, self.tests_a, self.tests_b, strict=True):
            if full.verdict not in definite:
                continue
            for name, half in (("A", a), ("B", b)):
                if half.leaning != full.leaning:
                    return (
                        f"half {name}'s estimate of '{full.label}' ({half.effect.estimate:+.{full.digits}f}) is "
                        f"on the other side of the margin from all seeds' ({full.effect.estimate:+.{full.digits}f})"
                    )
        return ""

    @property
    def verdict(self) -> str:
        """The combined verdict: all seeds' verdict unless the halves contradict it (then inconclusive)."""
        v = self.verdict_all
        if v in (NOT_TESTABLE, INCONCLUSIVE):
            return v
        return INCONCLUSIVE if self.contradiction else v

    @property
    def n(self) -> int:
        return min(t.effect.n for t in self.tests)

    def effect_text(self) -> str:
        return "; ".join(t.text() for t in self.tests)

    def to_json(self) -> dict[str, Any]:
        return {
            "tests": [t.to_json() for t in self.tests],
            "tests_a": [t.to_json() for t in self.tests_a],
            "tests_b": [t.to_json() for t in self.tests_b],
            "seeds_a": self.seeds_a,
            "seeds_b": self.seeds_b,
            "verdict_all": self.verdict_all,
            "contradiction": self.contradiction,
            "precondition": None if self.precondition is None else {
                "text": self.precondition.text, "value": self.precondition.value, "holds": self.precondition.holds},
        }  # fmt: skip


def split_halves(seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    """Two disjoint halves in the given order: A = the first ``ceil(n / 2)``, B = the rest."""
    seeds = list(seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    k = (len(seeds) + 1) // 2
    return seeds[:k], seeds[k:]


def replicate(
    evaluate: Callable[[list[int]], list[Test]],
    seeds: Sequence[int],
    precondition: Precondition | None = None,
) -> Judgement:
    """Judge a claim on all ``seeds`` and on each half (:func:`split_halves`); ``evaluate(seeds)`` returns its
    parts computed from those seeds only. With fewer than 2 seeds there are no halves to compare."""
    seeds = list(seeds)
    tests = evaluate(seeds)
    if not tests:
        raise ValueError("a claim needs at least one test")
    if len(seeds) < 2:
        return Judgement(tests, precondition=precondition)
    a, b = split_halves(seeds)
    tests_a, tests_b = evaluate(a), evaluate(b)
    if len(tests_a) != len(tests) or len(tests_b) != len(tests):
        raise ValueError("evaluate() must return the same parts for every subset of seeds")
    return Judgement(tests, tests_a, tests_b, a, b, precondition)


def select(values: Sequence[float], all_seeds: Sequence[int], seeds: Sequence[int]) -> list[float]:
    """The values of ``seeds`` from a list aligned with ``all_seeds``."""
    index = {s: i for i, s in enumerate(all_seeds)}
    missing = [s for s in seeds if s not in index]
    if missing:
        raise KeyError(f"seeds {missing} not among {list(all_seeds)}")
    return [values[index[s]] for s in seeds]
