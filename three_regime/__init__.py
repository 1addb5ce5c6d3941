"""A Three-regime Model of Network Pruning (Zhou, Yang, Chang, Mahoney, ICML 2023; arXiv:2305.18383).

Dense training along a temperature-like knob, one-shot magnitude pruning to a load-like density,
retraining with fixed masks, and the loss-landscape metrics (LMC, CKA) that sort the results into
Regimes I, II-A and II-B. See README.md (issue #5).
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
