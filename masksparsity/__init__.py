"""MaskSparsity: Pruning-aware Sparse Regularization for Network Pruning (Jiang et al., MIR 2023; arXiv:2201.06776).

Status: skeleton. The method and its reproduction are issue #4; see README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
