"""MaskSparsity: Pruning-aware Sparse Regularization for Network Pruning (Jiang et al., MIR 2023; arXiv:2201.06776).

The method (``method.py``), the networks (``models.py``), training loops (``train.py``) and the reproduction
(``reproduce.py``, presets in ``config.py``); see README.md (issue #4).
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
