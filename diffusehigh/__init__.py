"""DiffuseHigh: Training-free Progressive High-Resolution Image Synthesis through Structure Guidance
(Kim, Hwang, Zhang, Park; AAAI 2025; arXiv:2406.18459).

Status: skeleton. The method and its reproduction are issue #7; see README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
