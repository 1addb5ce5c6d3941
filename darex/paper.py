"""The paper's own numbers, as data: "DARE the Extreme" (Deng et al., ICLR 2025; arXiv:2410.09344).

Empty on purpose. The research notes (../shared/papers/darex.md §2) could read only the abstract and
figure captions, which state gains as bounds ("> 30%" on CoLA and SST-2 at high rates; "up to > 10-fold"
at p = 0.99 in Fig. 1), not table values. The per-task numbers circulating in reviews are secondary
and are not printed as the paper's. Fill this in from Tables 1-9 of the PDF when someone can read them.
"""

from common.results import PaperNumber

PAPER_NUMBERS: tuple[PaperNumber, ...] = ()
