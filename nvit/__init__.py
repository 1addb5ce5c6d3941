"""NViT: Global Vision Transformer Pruning with Hessian-Aware Saliency (Yang et al., CVPR 2023; arXiv:2110.04869).

``models`` (a ViT with per-block H/QK/V/MLP and one EMB, timm-compatible, masks, dense conversion, ReViT),
``method`` (the Hessian-aware saliency of Eq. 6, groups, global and uniform selection, baselines), ``latency``
(the lookup table and Eq. 7's term), ``prune`` (the iterative pruner with KD and latency targets), ``train``
(data, objective, loops) and ``reproduce`` (the smoke/mini/paper experiments). See README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
