"""The paper's own numbers, as data: Yang et al., "Global Vision Transformer Pruning with Hessian-Aware Saliency".

CVPR 2023, pp. 18547-18557; arXiv:2110.04869. Every number here was read from the CVPR 2023 camera-ready text
(CVF open access); which arXiv version matches it was not checked, so sources name the CVPR tables. Nothing is
recalled or taken from a secondary source.

Deliberately left out:
- Table 1's parenthesised *parameter* ratios: the converted text gives 2.57x for NViT-B while 86M/34M is
  about 2.5x, so the column could not be read reliably. The absolute parameter counts are kept.
- The "+ ASP" rows of Table 1 (2:4 sparsity with TensorRT ASP is outside this reproduction) and the Swin rows.
- Every appendix number (A.1-A.3, B.1-B.6, C.1-C.2): the appendix could not be retrieved.
- Tables 2-4 (other methods, transfer): no preset targets them. Table 7 (ReViT vs DeiT from scratch) is kept
  for its architecture columns (params, FLOPs, speedup), which ``python -m nvit archtable`` compares with.

Latency numbers in Table 1 are speedups over DeiT-B at batch size 256 on one GPU.
"""

from __future__ import annotations

from common.results import PaperNumber

T1 = "Table 1 (CVPR 2023)"
T5 = "Table 5 (CVPR 2023)"
T7 = "Table 7 (CVPR 2023)"


def _table1(
    model: str, params_m: float, gflops: float, flops_x: float, v100: float, rtx3080: float, top1: float
) -> list[PaperNumber]:
    """One row of Table 1 (ratios and speedups are relative to DeiT-B)."""
    return [
        PaperNumber(source=T1, setting=model, metric="params", value=params_m, unit="M"),
        PaperNumber(source=T1, setting=model, metric="FLOPs", value=gflops, unit="G"),
        PaperNumber(source=T1, setting=model, metric="FLOPs reduction vs DeiT-B", value=flops_x, unit="x"),
        PaperNumber(source=T1, setting=model, metric="speedup vs DeiT-B, V100, batch 256", value=v100, unit="x"),
        PaperNumber(source=T1, setting=model, metric="speedup vs DeiT-B, RTX 3080, batch 256", value=rtx3080, unit="x"),
        PaperNumber(source=T1, setting=model, metric="ImageNet-1K top-1", value=top1, unit="%"),
    ]


TABLE_1: tuple[PaperNumber, ...] = (
    # The dense model every NViT is pruned from (DeiT-B with distillation token).
    *_table1("DeiT-B", 86, 17.6, 1.00, 1.00, 1.00, 83.36),
    # NViT-B/H/S/T: latency targets 0.54 / 0.50 / 0.39 / 0.19 of DeiT-B (official commands).
    *_table1("NViT-B", 34, 6.8, 2.57, 1.86, 1.75, 83.29),
    *_table1("NViT-H", 30, 6.2, 2.85, 2.01, 1.89, 82.95),
    *_table1("NViT-S", 21, 4.2, 4.24, 2.52, 2.35, 82.19),
    *_table1("NViT-T", 6.9, 1.3, 13.55, 4.97, 4.55, 76.21),
    # Reference architectures NViT-S/T are compared with (distilled DeiT numbers, as in Table 1).
    *_table1("DeiT-S", 22, 4.6, 3.82, 2.44, 2.27, 81.20),
    *_table1("DeiT-T", 5.6, 1.2, 14.01, 5.18, 4.66, 74.50),
)
"""Table 1: structural pruning of DeiT-B on ImageNet-1K."""

TABLE_5: tuple[PaperNumber, ...] = (
    *(
        PaperNumber(source=T5, setting=f"DeiT-B {layer}", metric="average Hessian trace", value=value)
        for layer, value in (
            ("Q", 1.4e-6),
            ("K", 1.6e-6),
            ("V", 6.5e-6),
            ("Proj", 6.4e-6),
            ("FC1", 6.1e-6),
            ("FC2", 4.6e-6),
        )
    ),
    *(
        PaperNumber(
            source=T5, setting=f"DeiT-B, one {dim} neuron", metric="latency saved when pruned", value=v, unit="s"
        )
        for dim, v in (("QK", 1.7e-4), ("V", 1.4e-4), ("MLP", 1.2e-5))
    ),
)
"""Table 5: per-layer sensitivity (average Hessian trace) and latency saved per pruned neuron, on DeiT-B."""


def _table7(model: str, emb: int, params_m: float, gflops: float, speedup: float, top1: float) -> list[PaperNumber]:
    """One row of Table 7: trained from scratch with one recipe; speedup relative to DeiT-B (device not stated in
    the text we read)."""
    return [
        PaperNumber(source=T7, setting=model, metric="EMB", value=emb),
        PaperNumber(source=T7, setting=model, metric="params", value=params_m, unit="M"),
        PaperNumber(source=T7, setting=model, metric="FLOPs", value=gflops, unit="G"),
        PaperNumber(source=T7, setting=model, metric="speedup vs DeiT-B", value=speedup, unit="x"),
        PaperNumber(source=T7, setting=model, metric="ImageNet-1K top-1, from scratch", value=top1, unit="%"),
    ]


TABLE_7: tuple[PaperNumber, ...] = (
    # DeiT rows: the authors' re-run of the DeiT recipe (marked * in the table); ReViT: the Table 6 rule.
    *_table7("DeiT-S", 384, 22, 4.6, 2.29, 81.01),
    *_table7("ReViT-S", 384, 23, 4.7, 2.31, 81.22),
    *_table7("DeiT-T", 192, 5.6, 1.2, 4.39, 72.84),
    *_table7("ReViT-T", 176, 5.9, 1.3, 4.75, 74.20),
)
"""Table 7: ReViT vs DeiT trained from scratch with the same recipe (ratios and speedups vs DeiT-B)."""

PAPER_NUMBERS: tuple[PaperNumber, ...] = TABLE_1 + TABLE_5 + TABLE_7
"""All numbers above, for ``Measurement(paper=..., paper_source=...)`` look-ups."""


def lookup(setting: str, metric: str, source: str | None = None) -> PaperNumber:
    """The paper's number for ``setting``/``metric`` (in table ``source`` if given, e.g. :data:`T7`; else the
    first table that has it); KeyError if the paper gives none (never a guess)."""
    for number in PAPER_NUMBERS:
        if (number.setting, number.metric) == (setting, metric) and source in (None, number.source):
            return number
    raise KeyError((setting, metric))
