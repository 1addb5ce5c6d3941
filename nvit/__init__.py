"""NViT: Global Vision Transformer Pruning with Hessian-Aware Saliency (Yang et al., CVPR 2023; arXiv:2110.04869).

Status: skeleton. ``config.py`` holds the presets (smoke, mini, paper) and ``paper.py`` the paper's own numbers;
the method and its reproduction are issue #3, so ``python -m nvit reproduce`` exits with "not implemented
yet". See README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
