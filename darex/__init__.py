"""DAREx: DARE the Extreme, delta-parameter pruning of fine-tuned models (Deng et al., ICLR 2025; arXiv:2410.09344).

The library: deltas of plain torch modules, Hugging Face models and PEFT LoRA adapters; DARE; DAREx-q
with a global q (labelled or label-free search) or the analytical per-layer q; magnitude and WANDA
pruning of deltas; AdamR (DAREx-L2); compact storage of the pruned delta. ``python -m darex --help``
lists the reproduction and the ``prune`` command. See README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

from .adamr import AdamR
from .method import (
    DeltaMismatchError,
    analytical_layer_q,
    apply_delta,
    coarse_to_fine_q,
    collect_input_statistics,
    dare,
    delta_parameters,
    delta_statistics,
    head_inputs,
    kept_fraction,
    lora_delta_parameters,
    magnitude_prune,
    optimise_layer_q,
    output_change,
    q_grid,
    search_global_q,
    wanda_prune,
)
from .storage import load_sparse_delta, pruned_model, save_pruned, save_sparse_delta

__all__ = [
    "AdamR",
    "DeltaMismatchError",
    "analytical_layer_q",
    "apply_delta",
    "coarse_to_fine_q",
    "collect_input_statistics",
    "dare",
    "delta_parameters",
    "delta_statistics",
    "head_inputs",
    "kept_fraction",
    "load_sparse_delta",
    "lora_delta_parameters",
    "magnitude_prune",
    "optimise_layer_q",
    "output_change",
    "pruned_model",
    "q_grid",
    "save_pruned",
    "save_sparse_delta",
    "search_global_q",
    "wanda_prune",
]
