"""DAREx: DARE the Extreme, delta-parameter pruning of fine-tuned models (Deng et al., ICLR 2025; arXiv:2410.09344).

Status: DARE and DAREx-q with a labelled global q are implemented (``method.py``) and run by the
``smoke`` preset on a synthetic task. The full method and the ``mini``/``paper`` reproductions are
issue #6; see README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

from .method import apply_delta, dare, delta_parameters, q_grid, search_global_q

__all__ = ["apply_delta", "dare", "delta_parameters", "q_grid", "search_global_q"]
