"""The claims of the `smoke`/`mini` reproductions and the rules that judge them, from the results record alone.

Every rule is a pure function of the record: its config, and the per-image metric values and reference means that
:mod:`diffusehigh.reproduce` stores in ``record.extra`` (``per_image``, ``reference``, ``timing``, ``jump``). So
``python -m diffusehigh report`` can re-judge a record, and the rules are tested on synthetic records
(tests/diffusehigh/test_claims.py) without sampling anything.

**Unit of replication: the image.** The metrics are per generated image; an image of one arm is paired with the
image of the other arm made from the same base sample and the same noise (same seed and index), and the 95%
interval is the paired t interval over images (:func:`common.stats.paired_difference`). Direct samples do not
derive from the base samples, so they are compared unpaired (Welch). The cost claim's unit is a timed repeat.
**Replication**: the images are ordered seed by seed (config order), and the claim is judged again on the first
half of them and on the rest (:func:`common.stats.replicate`), which with an even number of seeds means two
disjoint seed sets.

**Preconditions: the base-sample quality gate.** A claim about layout needs base samples that mostly show one
object; a claim about detail needs a base model that renders the data's fine texture (the 4 px stripes) at its
own resolution, with the data's dark background. Each is measured on the base samples against real images
rendered at the base resolution, and a claim whose gate fails is "not testable here" with the measured values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.results import NOT_TESTABLE, RunRecord
from common.stats import (
    Effect,
    Judgement,
    Precondition,
    Test,
    difference,
    mean_ci,
    paired_difference,
    replicate,
    split_halves,
)

# Condition names (the rows of the tables) and metric names (their columns).
REAL = "real, rendered natively"
BASE = "base samples (native resolution)"
DIRECT = "direct sampling at the target size"
BICUBIC = "bicubic upsampling"
SDEDIT = "SDEdit: upsample + sharpen + noise + denoise (dwt_steps=0)"
DH = "DiffuseHigh (progressive)"
ONE_JUMP = "DiffuseHigh, one jump from the base"

M_OBJ, M_SINGLE, M_AREA = "objects / image", "single-object share [%]", "largest object [area fraction]"
M_PSNR, M_HF, M_STRIPE, M_BORDER = "LR-PSNR [dB]", "high-pass energy [x1e-3]", "stripe energy [x1e-3]", "border mean"
M_EDGE = "edge width [px]"
M_KID, M_KIDC, M_TIME = "KID x1e3 (whole)", "KID x1e3 (crops)", "time / image [s]"
PER_IMAGE_METRICS = (M_OBJ, M_AREA, M_PSNR, M_HF, M_STRIPE, M_BORDER, M_EDGE)
"""The per-image values kept in the record for the claims (rounded to :data:`DIGITS` significant digits)."""
DIGITS = 6

# Quality gate of the base samples (measured at the base resolution against real images rendered there).
GATE_SINGLE_MIN = 70.0
"""Layout: at least 70% of the base samples show exactly one object (real: 100%). Below it the base model's own
layout failures would dominate any count-based comparison."""
GATE_STRIPE_MIN = 0.5
"""Texture: the base samples' stripe energy is at least half the real images' (the model renders the stripes)."""
GATE_BORDER_MAX = 0.10
"""Colour: the base samples' mean border (background) value is within 0.10 of the real images' (on [0, 1])."""

# Decision margins: the smallest effect that counts, in each metric's unit.
REPEAT_MARGIN = 0.5
"""objects/image: direct sampling must show at least half an extra object per image more than DiffuseHigh (one
repeated object in every other image) to count as repetition."""
LAYOUT_KEPT_MARGIN = -10.0
"""pp: DiffuseHigh's single-object share may fall at most 10 pp below the base samples' own (it keeps the layout)."""
PSNR_MARGIN = 0.5
"""dB: the DWT guidance must raise LR-PSNR by at least half a dB (numerical noise is ~1e-3 dB; half a dB is a
visible gain in fidelity to the guide)."""
COUNT_MARGIN = 0.0
"""objects/image: with DWT guidance the object count must be closer to the guide's than without; any reduction
of the count error counts (the count changes in whole objects, so every unit of it is a layout change)."""
EDGE_MARGIN = 0.25
"""px: edges must be narrower by at least a quarter pixel (real renders have ~0.6 px wide edges at every size; a
bicubic 2x enlargement widens them by ~0.4 px; the width of one image is measured to a few hundredths of a px)."""
DETAIL_SHARE = 0.10
"""Detail claims: an effect must be at least 10% of the real images' stripe energy at that size (a smaller change in
texture energy is not a visible difference in texture)."""
COST_MARGIN = 1.0
"""Speed-up: direct sampling must take longer than DiffuseHigh including its base image (ratio > 1)."""


# ----------------------------------------------------------------------------------------------------
# Reading the record


def key(factor: float, name: str) -> str:
    return f"{factor:g}x|{name}"


def round_values(values: Sequence[float]) -> list[float | None]:
    """Values for the record: ``DIGITS`` significant digits; NaN (no value for that image) as None."""
    return [float(f"{float(v):.{DIGITS}g}") if np.isfinite(v) else None for v in values]


@dataclass
class PerImage:
    """Per-image values of every condition, with each image's unit (seed, index); from ``record.extra``."""

    seeds: list[int]
    conditions: dict[str, dict[str, Any]]
    reference: dict[str, dict[str, float]]

    @classmethod
    def from_record(cls, record: RunRecord) -> PerImage:
        pi = record.extra.get("per_image", {})
        return cls(list(pi.get("seeds", record.seeds)), pi.get("conditions", {}), record.extra.get("reference", {}))

    def has(self, factor: float, name: str) -> bool:
        return key(factor, name) in self.conditions

    def units(self, factor: float, name: str) -> list[tuple[int, int]]:
        k = self.conditions[key(factor, name)]["per_seed"]
        return [(s, i) for s in self.seeds for i in range(k)]

    def values(self, factor: float, name: str, metric: str, part: str | None = None) -> np.ndarray:
        """All values of a condition, or those of its half ``part`` ("A": the first half of its images in seed
        order, "B": the rest)."""
        v = self.raw(factor, name, metric)
        v = v if part is None else v[_half(len(v), part)]
        return v[np.isfinite(v)]

    def raw(self, factor: float, name: str, metric: str) -> np.ndarray:
        """Every image's value in unit order; NaN where the image has none (stored as None)."""
        return np.asarray(self.conditions[key(factor, name)]["metrics"][metric], float)

    def paired(self, factor_a: float, a: str, factor_b: float, b: str, metric: str, part: str | None = None):
        """The values of ``a`` and ``b`` on the images both have (same seed and index), in seed order; with ``part``
        the first ("A") or second ("B") half of those pairs. Pairs with a missing value (NaN: e.g. no edge found)
        are dropped after the halves are cut, so the halves stay aligned with the seeds."""
        ua, ub = self.units(factor_a, a), self.units(factor_b, b)
        in_b = set(ub)
        common = [u for u in ua if u in in_b]
        va = dict(zip(ua, self.raw(factor_a, a, metric), strict=True))
        vb = dict(zip(ub, self.raw(factor_b, b, metric), strict=True))
        if part is not None:
            common = [common[i] for i in _half(len(common), part)]
        a_, b_ = np.asarray([va[u] for u in common], float), np.asarray([vb[u] for u in common], float)
        keep = np.isfinite(a_) & np.isfinite(b_)
        return a_[keep], b_[keep]

    def real(self, factor: float, metric: str) -> float:
        return float(self.reference[f"{factor:g}x"][metric])


def _round3(x: float) -> float:
    """A margin derived from a reference value, to 3 significant digits (as printed)."""
    return float(f"{x:.3g}")


def _half(n: int, part: str) -> list[int]:
    a, b = split_halves(range(n))
    return {"A": a, "B": b}[part]


def _judge(pi: PerImage, tests: Callable[[str | None], list[Test]], pre: Precondition | None) -> Judgement:
    """Judge on all images (``tests(None)``) and on the two halves of every arm's images (``tests("A")``: the first
    half in seed order, ``tests("B")``: the rest; with an even number of seeds, two disjoint seed sets)."""
    # replicate() splits its ids [0, 1, 2] into [0, 1] and [2]: the id lists stand for all, half A, half B
    part = {3: None, 2: "A", 1: "B"}
    j = replicate(lambda ids: tests(part[len(ids)]), [0, 1, 2], pre)
    if len(pi.seeds) >= 2 and len(pi.seeds) % 2 == 0:
        j.seeds_a, j.seeds_b = split_halves(pi.seeds)
    else:  # the halves split the images of one seed (or of the middle seed): no seed set to name
        j.seeds_a, j.seeds_b = [], []
    return j


# ----------------------------------------------------------------------------------------------------
# The base-sample quality gate


@dataclass(frozen=True)
class Gate:
    single_share: float
    stripe_ratio: float
    border: float
    border_real: float

    @property
    def layout(self) -> bool:
        return self.single_share >= GATE_SINGLE_MIN

    @property
    def texture(self) -> bool:
        return self.stripe_ratio >= GATE_STRIPE_MIN and abs(self.border - self.border_real) <= GATE_BORDER_MAX

    def layout_precondition(self) -> Precondition:
        return Precondition(f"base samples show one object (single-object share >= {GATE_SINGLE_MIN:g}%)",
                            f"{self.single_share:.0f}%", self.layout)  # fmt: skip

    def texture_precondition(self) -> Precondition:
        return Precondition(
            f"base samples render the stripes (stripe energy >= {GATE_STRIPE_MIN:.0%} of real) and a dark background "
            f"(border mean within {GATE_BORDER_MAX:g} of real)",
            f"stripes {self.stripe_ratio:.0%} of real, border {self.border:.2f} vs {self.border_real:.2f}",
            self.texture,
        )

    def to_json(self) -> dict[str, Any]:
        return {"single_share": self.single_share, "stripe_ratio": self.stripe_ratio, "border": self.border,
                "border_real": self.border_real, "layout": self.layout, "texture": self.texture}  # fmt: skip


def quality_gate(pi: PerImage) -> Gate:
    """The base samples' single-object share, stripe energy relative to real images at the base resolution, and
    border mean (with the real one)."""
    objects = pi.values(1.0, BASE, M_OBJ)
    stripe_real = pi.real(1.0, M_STRIPE)
    return Gate(
        single_share=float(100 * np.mean(objects == 1)),
        stripe_ratio=float(np.mean(pi.values(1.0, BASE, M_STRIPE)) / stripe_real) if stripe_real > 0 else 0.0,
        border=float(np.mean(pi.values(1.0, BASE, M_BORDER))),
        border_real=pi.real(1.0, M_BORDER),
    )


# ----------------------------------------------------------------------------------------------------
# The claims


@dataclass
class ClaimResult:
    id: str
    claim: str
    paper_evidence: str
    our_evidence: str
    judgement: Judgement | None = None
    verdict: str | None = None
    """Only for a claim that could not be set up at all (an arm not run): NOT_TESTABLE."""


def _not_run(cid: str, claim: str, paper: str, why: str) -> ClaimResult:
    return ClaimResult(cid, claim, paper, why, verdict=NOT_TESTABLE)


def _mean(pi: PerImage, factor: float, name: str, metric: str) -> float:
    """The mean over the images that have a value (NaN if none has)."""
    v = pi.values(factor, name, metric)
    return float(np.mean(v)) if len(v) else math.nan


def claim_repetition(pi: PerImage, top: float, gate: Gate) -> ClaimResult:
    claim = "Direct sampling above the training size repeats objects; DiffuseHigh does not"
    paper = "Sec. 1, qualitative comparisons; project page"
    if not pi.has(top, DIRECT):
        return _not_run("C1", claim, paper, "direct sampling not run")

    def tests(part):
        direct = pi.values(top, DIRECT, M_OBJ, part)
        dh = pi.values(top, DH, M_OBJ, part)
        s_dh, s_base = pi.paired(top, DH, 1.0, BASE, M_OBJ, part)
        return [
            Test(f"objects/image, direct - DiffuseHigh at {top:g}x (unpaired)", difference(direct, dh), REPEAT_MARGIN,
                 unit="objects"),
            Test("single-object share, DiffuseHigh - its base samples (paired)",
                 paired_difference(100.0 * (s_dh == 1), 100.0 * (s_base == 1)), LAYOUT_KEPT_MARGIN, unit="pp",
                 digits=1),
        ]  # fmt: skip

    single_dh = 100 * np.mean(pi.values(top, DH, M_OBJ) == 1)
    evidence = (
        f"At {top:g}x: {_mean(pi, top, DIRECT, M_OBJ):.2f} objects/image direct vs {_mean(pi, top, DH, M_OBJ):.2f} "
        f"DiffuseHigh (real 1.00); single-object share DiffuseHigh {single_dh:.0f}% "
        f"vs base {gate.single_share:.0f}%. Rule: direct shows more than DiffuseHigh by > {REPEAT_MARGIN:g} object per "
        f"image (Welch: direct samples are independent of the base samples) AND DiffuseHigh's single-object share is "
        f"not more than {-LAYOUT_KEPT_MARGIN:g} pp below its base samples' (paired by image)."
    )
    return ClaimResult("C1", claim, paper, evidence, _judge(pi, tests, gate.layout_precondition()))


def _guide(pi: PerImage, factor: float) -> tuple[float, str, str]:
    """The guide as measured at ``factor``: the bicubic upsample of the base sample, else the base sample."""
    if pi.has(factor, BICUBIC):
        return factor, BICUBIC, "bicubic-upsampled guide"
    return 1.0, BASE, "base sample"


def claim_structure(pi: PerImage, cfg: dict, top: float, gate: Gate) -> ClaimResult:
    claim = ("DWT structure guidance keeps the low-resolution structure better than plain noising-denoising (SDEdit) "
             "at the same noise level")  # fmt: skip
    paper = "Sec. 3 (structure guidance), ablation; project page"
    if not (pi.has(top, DH) and pi.has(top, SDEDIT)):
        return _not_run("C2", claim, paper, "SDEdit not run")
    s, a = cfg["stages"], cfg["ablation"]
    strong = [v for v in a["noise_sigma"] if v > s["noise_sigma"]]
    pair = None
    for f in a["scale_factors"]:
        if strong:
            v = max(strong)
            with_, without = f"noise sigma={v:.2f}, dwt_steps={s['dwt_steps']}", f"noise sigma={v:.2f}, dwt_steps=0"
            if pi.has(f, with_) and pi.has(f, without):
                pair = (f"sigma {v:g} at {f:g}x", f, with_, without)
    if pair is None:
        pair = (f"the default sigma at {top:g}x", top, DH, SDEDIT)
    label, f2, with_, without = pair
    gf, gname, gtext = _guide(pi, f2)

    def count_error(name, part):
        out, guide = pi.paired(f2, name, gf, gname, M_OBJ, part)
        return np.abs(out - guide)

    def tests(part):
        a_, b_ = pi.paired(top, DH, top, SDEDIT, M_PSNR, part)
        return [
            Test(f"LR-PSNR, DiffuseHigh - SDEdit at {top:g}x", paired_difference(a_, b_), PSNR_MARGIN, unit="dB"),
            Test(f"|objects - guide's|, with - without DWT ({label})",
                 paired_difference(count_error(with_, part), count_error(without, part)), COUNT_MARGIN, higher=False,
                 unit="objects", digits=3),
        ]  # fmt: skip

    evidence = (
        f"LR-PSNR at {top:g}x: {_mean(pi, top, DH, M_PSNR):.2f} dB with DWT vs {_mean(pi, top, SDEDIT, M_PSNR):.2f} "
        f"without (partly by construction: LR-PSNR sees the low band the guidance writes). A structure measure the "
        f"method does not write, at {label}: objects/image {_mean(pi, f2, with_, M_OBJ):.2f} with vs "
        f"{_mean(pi, f2, without, M_OBJ):.2f} without DWT ({gtext}: {_mean(pi, gf, gname, M_OBJ):.2f}). Rule: LR-PSNR "
        f"higher by > {PSNR_MARGIN:g} dB AND the object count closer to the guide's with DWT than without (paired "
        "by image)."
    )
    return ClaimResult("C2", claim, paper, evidence, _judge(pi, tests, gate.layout_precondition()))


def _paired_effect(a: np.ndarray, b: np.ndarray) -> Effect:
    """The paired difference; with no pairs (no image had a value in both arms) an undefined effect."""
    return paired_difference(a, b) if len(a) else Effect(math.nan, -math.inf, math.inf, 0, "no pairs")


def _edge_test(pi: PerImage, factor: float, a: str, b: str, label: str, part: str | None) -> Test:
    """Edge width of ``a`` minus ``b`` (paired by image) below -EDGE_MARGIN: ``a`` has the sharper edges."""
    x, y = pi.paired(factor, a, factor, b, M_EDGE, part)
    return Test(f"edge width, {label} at {factor:g}x", _paired_effect(x, y), -EDGE_MARGIN, higher=False, unit="px")


def _edge_text(pi: PerImage, factor: float, rows: Sequence[tuple[str, str]]) -> str:
    means = ", ".join(f"{label} {_mean(pi, factor, name, M_EDGE):.2f}" for label, name in rows)
    return f"edge width at {factor:g}x (px; real {pi.real(factor, M_EDGE):.2f}): {means}"


EDGE_RULE = (
    f"Rule: edges narrower by more than {EDGE_MARGIN:g} px, paired by image (images without a measurable object edge "
    "are left out)."
)


def _stripe_rule(what: str, margin: float) -> str:
    return (f"Rule: {what} by more than {DETAIL_SHARE:.0%} of the real images' stripe energy ({margin:.3g} x1e-3), "
            "paired by image.")  # fmt: skip


def claim_detail(pi: PerImage, top: float, gate: Gate) -> list[ClaimResult]:
    claim = "DiffuseHigh adds fine detail that interpolation lacks"
    paper = "Sec. 1 and 4 (qualitative); issue #7 on the official repo disputes it (blurry outputs)"
    if not pi.has(top, BICUBIC):
        return [_not_run(i, f"{claim}: {w}", paper, "bicubic baseline not run") for i, w in
                (("C3a", "sharp object edges"), ("C3b", "the fine texture"))]  # fmt: skip
    real = pi.real(top, M_STRIPE)
    margin = _round3(DETAIL_SHARE * real)

    def edges(part):
        return [_edge_test(pi, top, DH, BICUBIC, "DiffuseHigh - bicubic", part)]

    def texture(part):
        a_, b_ = pi.paired(top, DH, top, BICUBIC, M_STRIPE, part)
        return [Test(f"stripe energy, DiffuseHigh - bicubic at {top:g}x", _paired_effect(a_, b_), margin,
                     unit="x1e-3", digits=3)]  # fmt: skip

    edge_evidence = (
        f"{_edge_text(pi, top, [('DiffuseHigh', DH), ('bicubic', BICUBIC)])}; "
        f"base samples at their own size {_mean(pi, 1.0, BASE, M_EDGE):.2f}. {EDGE_RULE}"
    )
    texture_evidence = (
        f"At {top:g}x, stripe energy (oriented energy at the data's 4 px stripe frequency; grain and noise do not "
        f"count): DiffuseHigh {_mean(pi, top, DH, M_STRIPE):.3f}, bicubic {_mean(pi, top, BICUBIC, M_STRIPE):.3f}, "
        f"real {real:.3f} x1e-3; high-pass energy {_mean(pi, top, DH, M_HF):.2f} vs "
        f"{_mean(pi, top, BICUBIC, M_HF):.2f} (real {pi.real(top, M_HF):.2f}) x1e-3. "
        + _stripe_rule("DiffuseHigh's stripe energy exceeds bicubic's", margin)
    )
    return [
        ClaimResult("C3a", f"{claim}: sharp object edges", paper, edge_evidence,
                    _judge(pi, edges, gate.layout_precondition())),
        ClaimResult("C3b", f"{claim}: the fine texture (the data's 4 px stripes)", paper, texture_evidence,
                    _judge(pi, texture, gate.texture_precondition())),
    ]  # fmt: skip


def claim_sharpening(pi: PerImage, cfg: dict, gate: Gate) -> list[ClaimResult]:
    claim = "Sharpening the upsampled image before noising restores sharp detail (added in v5)"
    paper = "v5 Sec. 3 (sharp object boundaries and textures); project page (qualitative)"
    alpha = cfg["stages"]["sharpening_alpha"]
    on, off = f"sharpening alpha={alpha:g}", "sharpening alpha=0"
    found = [f for f in cfg["ablation"]["scale_factors"] if alpha > 0 and pi.has(f, on) and pi.has(f, off)]
    if not found:
        return [_not_run(i, f"{claim}: {w}", paper, "the alpha grid lacks 0 or the default") for i, w in
                (("C4a", "object edges"), ("C4b", "texture"))]  # fmt: skip
    f = found[-1]
    real = pi.real(f, M_STRIPE)
    margin = _round3(DETAIL_SHARE * real)

    def edges(part):
        return [_edge_test(pi, f, on, off, f"alpha={alpha:g} - alpha=0", part)]

    def texture(part):
        a_, b_ = pi.paired(f, on, f, off, M_STRIPE, part)
        return [Test(f"stripe energy, alpha={alpha:g} - alpha=0 at {f:g}x", _paired_effect(a_, b_), margin,
                     unit="x1e-3", digits=3)]  # fmt: skip

    common = (f"objects/image {_mean(pi, f, on, M_OBJ):.2f} with vs {_mean(pi, f, off, M_OBJ):.2f} without; "
              f"LR-PSNR {_mean(pi, f, on, M_PSNR):.2f} vs {_mean(pi, f, off, M_PSNR):.2f} dB")  # fmt: skip
    edge_evidence = f"{_edge_text(pi, f, [(f'alpha={alpha:g}', on), ('alpha=0', off)])}; {common}. {EDGE_RULE}"
    texture_evidence = (
        f"At {f:g}x, stripe energy alpha={alpha:g} {_mean(pi, f, on, M_STRIPE):.3f} vs alpha=0 "
        f"{_mean(pi, f, off, M_STRIPE):.3f} (real {real:.3f}) x1e-3; high-pass energy {_mean(pi, f, on, M_HF):.2f} vs "
        f"{_mean(pi, f, off, M_HF):.2f} (real {pi.real(f, M_HF):.2f}) x1e-3. "
        + _stripe_rule("sharpening raises the stripe energy", margin)
    )
    return [
        ClaimResult("C4a", f"{claim}: sharper object edges", paper, edge_evidence,
                    _judge(pi, edges, gate.layout_precondition())),
        ClaimResult("C4b", f"{claim}: more of the fine texture", paper, texture_evidence,
                    _judge(pi, texture, gate.texture_precondition())),
    ]  # fmt: skip


def jump_conditions(record: RunRecord) -> tuple[float, str, str] | None:
    """(factor, progressive row, one-jump row) of the progressive-vs-one-jump test, if it ran."""
    jump = record.extra.get("jump")
    if not jump:
        return None
    return float(jump["factor"]), jump["progressive"], jump["one_jump"]


def claim_progressive(pi: PerImage, jump: tuple[float, str, str] | None, gate: Gate) -> list[ClaimResult]:
    claim = "Progressive stages beat a single jump to the target size"
    paper = "Sec. 3 (progressive design; released schedule x2, x1.5, x1.33); the old research configs used one jump"
    if jump is None:
        return [_not_run(i, f"{claim}: {w}", paper, "one-jump variant not run in this preset") for i, w in
                (("C5a", "sharper object edges"), ("C5b", "texture closer to the real images'"))]  # fmt: skip
    f, prog, one = jump
    real = pi.real(f, M_STRIPE)
    margin = _round3(DETAIL_SHARE * real)

    def edges(part):
        return [_edge_test(pi, f, prog, one, "progressive - one jump", part)]

    def texture(part):
        a_, b_ = pi.paired(f, prog, f, one, M_STRIPE, part)
        effect = _paired_effect(np.abs(a_ - real), np.abs(b_ - real))
        return [Test(f"|stripe energy - real|, progressive - one jump at {f:g}x", effect, -margin, higher=False,
                     unit="x1e-3", digits=3)]  # fmt: skip

    common = (f"{prog} vs {one}: LR-PSNR {_mean(pi, f, prog, M_PSNR):.2f} vs {_mean(pi, f, one, M_PSNR):.2f} dB, "
              f"objects/image {_mean(pi, f, prog, M_OBJ):.2f} vs {_mean(pi, f, one, M_OBJ):.2f}")  # fmt: skip
    edge_evidence = f"{_edge_text(pi, f, [('progressive', prog), ('one jump', one)])}; {common}. {EDGE_RULE}"
    texture_evidence = (
        f"At {f:g}x, {common}; stripe energy {_mean(pi, f, prog, M_STRIPE):.3f} vs {_mean(pi, f, one, M_STRIPE):.3f} "
        f"(real {real:.3f}) x1e-3; high-pass energy {_mean(pi, f, prog, M_HF):.2f} vs {_mean(pi, f, one, M_HF):.2f} "
        f"(real {pi.real(f, M_HF):.2f}). "
        + _stripe_rule(
            "the progressive output's stripe energy is closer to the real images' than the one jump's", margin
        )
    )
    return [
        ClaimResult("C5a", f"{claim}: sharper object edges", paper, edge_evidence,
                    _judge(pi, edges, gate.layout_precondition())),
        ClaimResult("C5b", f"{claim}: texture closer to the real images'", paper, texture_evidence,
                    _judge(pi, texture, gate.texture_precondition())),
    ]  # fmt: skip


def claim_cost(record: RunRecord, top: float) -> ClaimResult:
    claim = "DiffuseHigh is cheaper than sampling directly at the target size"
    paper = "Sec. 4 (efficiency: only the last steps run at high resolution)"
    timing = record.extra.get("timing")
    if not timing or not timing.get("direct"):
        return _not_run("C6", claim, paper, "direct sampling not timed")
    base, stages, direct = (np.asarray(timing[k], float) for k in ("base", "diffusehigh", "direct"))
    ratio = direct / (base + stages)

    def tests(index):
        return [Test(f"time ratio direct / (base + DiffuseHigh stages) at {top:g}x", mean_ci(ratio[list(index)]),
                     COST_MARGIN, unit="x")]  # fmt: skip

    pixels = timing.get("evaluated_pixels", {})
    px = ""
    if pixels:
        px = (f" Network-evaluated pixels per image: direct {pixels['direct']:,} vs DiffuseHigh "
              f"{pixels['diffusehigh']:,} "
              f"including the base ({pixels['direct'] / pixels['diffusehigh']:.1f}x).")  # fmt: skip
    evidence = (
        f"At {top:g}x, s/image: direct {direct.mean():.3f} vs DiffuseHigh {stages.mean():.3f} + base {base.mean():.3f} "
        f"({timing['images']} images per timed batch, {len(ratio)} interleaved repeats, {timing['threads']} thread(s), "
        f"timed in the main process with no workers running).{px} Rule: the ratio exceeds {COST_MARGIN:g}; its "
        "interval is over the timed repeats (halves: first and second half of the repeats)."
    )
    pre = Precondition("none: cost does not depend on sample quality", "–", True)
    return ClaimResult("C6", claim, paper, evidence, replicate(tests, range(len(ratio)), pre))


def judge(record: RunRecord) -> list[ClaimResult]:
    """Every claim of a pixel-model record (smoke/mini), in id order."""
    pi = PerImage.from_record(record)
    cfg = record.config
    top = max(float(f) for f in cfg["stages"]["scale_factors"])
    gate = quality_gate(pi)
    return [
        claim_repetition(pi, top, gate),
        claim_structure(pi, cfg, top, gate),
        *claim_detail(pi, top, gate),
        *claim_sharpening(pi, cfg, gate),
        *claim_progressive(pi, jump_conditions(record), gate),
        claim_cost(record, top),
    ]


def add_claims(record: RunRecord) -> None:
    """Judge the record's claims and add them to it (with the quality gate's values in ``extra``)."""
    record.extra["quality_gate"] = quality_gate(PerImage.from_record(record)).to_json()
    for c in judge(record):
        record.claim(c.claim, paper_evidence=c.paper_evidence, our_evidence=c.our_evidence, verdict=c.verdict,
                     judgement=c.judgement, id=c.id)  # fmt: skip
