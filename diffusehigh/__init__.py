"""DiffuseHigh: Training-free Progressive High-Resolution Image Synthesis through Structure Guidance
(Kim, Hwang, Zhang, Park; AAAI 2025; arXiv:2406.18459).

The method (``dwt``, ``core``, ``pipeline``), the pixel-model reproduction (``models``, ``train``, ``data``,
``metrics``, ``reproduce``); see README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
