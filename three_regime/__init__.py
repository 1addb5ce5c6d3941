"""A Three-regime Model of Network Pruning (Zhou, Yang, Chang, Mahoney, ICML 2023; arXiv:2305.18383).

Status: skeleton. The method and its reproduction are issue #5; see README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
