"""The DiffuseHigh paper's own numbers (arXiv:2406.18459v5 / AAAI 2025), as data.

Deliberately empty. The research notes (../shared/papers/diffusehigh.md, section 3.1) could read only the
beginning of the paper; its quantitative comparison, ablation and inference-time tables were not
retrieved, so no number from them is known here, and none is guessed. The numbers that the notes do
give for DiffuseHigh (section 3.2: ScaleDiff, Scale-DiT, ResDiT) are third-party re-measurements with
other protocols and backbones; they are not the paper's and must not be added here.

To fill this in, copy Table 1 (quantitative comparison), the ablation table and the timing table by hand
from the paper (say which arXiv version or the AAAI proceedings, and the table number in ``source``).
"""

from __future__ import annotations

from common.results import PaperNumber

PAPER_NUMBERS: tuple[PaperNumber, ...] = ()
"""Numbers read from the paper itself; empty because its tables could not be read (see the module docstring)."""
