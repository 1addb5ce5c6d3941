"""The paper's own numbers, as data (Jiang et al., "Pruning-aware Sparse Regularization for Network Pruning").

Only numbers read from the paper itself are here: the abstract of arXiv:2201.06776v1, whose text is the
same in v2 and in the published version (Machine Intelligence Research 2023, DOI 10.1007/s11633-022-1353-0)
and in the official repository's README (research notes, §0 and §2.1).

Deliberately absent:
- every per-row number of the paper's tables (ResNet-56 on CIFAR-10; baseline and pruned accuracies of
  ResNet-110 and ResNet-50; ResNet-50's params reduction; the ablations). No stored copy of the paper
  exposed its tables, so these are TODO(paper) in the notes and are left out rather than guessed;
- the competitors' numbers (HRank, FilterSketch, FPGM, ...), which come from the competitors' own
  sources, not from this paper's tables;
- numbers derived by arithmetic (absolute FLOPs/params after pruning).

"FLOPs" in the paper are counted by the official code's ptflops-style counter, i.e. multiply-accumulates.
"""

from __future__ import annotations

from common.results import PaperNumber

ABSTRACT = "Abstract (arXiv:2201.06776v1; same in v2 and MIR 2023)"

PAPER_NUMBERS: tuple[PaperNumber, ...] = (
    PaperNumber(source=ABSTRACT, setting="ResNet-110 / CIFAR-10", metric="FLOPs reduction", value=63.03, unit="%"),
    PaperNumber(source=ABSTRACT, setting="ResNet-110 / CIFAR-10", metric="params reduction", value=60.34, unit="%"),
    # The abstract says "with no top-1 accuracy loss": a lower bound on the change, not a measured value.
    PaperNumber(
        source=ABSTRACT,
        setting="ResNet-110 / CIFAR-10",
        metric="top-1 change vs baseline, lower bound ('no top-1 accuracy loss')",
        value=0.0,
        unit="pp",
    ),
    # The abstract says "more than 51.07%": a lower bound.
    PaperNumber(
        source=ABSTRACT,
        setting="ResNet-50 / ILSVRC-2012",
        metric="FLOPs reduction, lower bound ('more than 51.07%')",
        value=51.07,
        unit="%",
    ),
    PaperNumber(
        source=ABSTRACT, setting="ResNet-50 / ILSVRC-2012", metric="top-1 change vs baseline", value=-0.76, unit="pp"
    ),
)
