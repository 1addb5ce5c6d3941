"""The paper's own numbers (Zhou et al., ICML 2023, arXiv:2305.18383), as data for the results tables.

Deliberately empty. Only the abstract, the Figure 1 caption and the official repository could be read
offline (shared/papers/three_regime.md); the paper body with its case-study tables could not, and the
abstract and caption state no numbers. What the notes do quantify was read elsewhere and is therefore
not the paper's own:

* Fig. 2 values (test error ~0.077 at 80 % density to ~0.175 at 5 %, mc down to ~-0.65, CKA ~0.88-0.99,
  normalized test-error peak ~0.032) were read off the colour bars of the PNGs in the official repo
  (``visualization/*.png``), produced by the repo's notebook. They are probably the paper's Fig. 2, but
  neither the figure number nor the values were checked against the PDF, and colour-bar readings are
  approximate (about +-0.01).
* The three case studies' accuracy gains are only known from recollection, which the notes forbid
  printing as the paper's.

Add a ``PaperNumber`` here only after reading it in the PDF, with the table/figure and arXiv version.
"""

from __future__ import annotations

from common.results import PaperNumber

PAPER_NUMBERS: tuple[PaperNumber, ...] = ()
