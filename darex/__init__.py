"""DAREx: DARE the Extreme, delta-parameter pruning of fine-tuned models (Deng et al., ICLR 2025; arXiv:2410.09344).

The library: deltas of plain torch modules, Hugging Face models and PEFT LoRA adapters; DARE; DAREx-q
with a global q (labelled or label-free search) or the analytical per-layer q; magnitude and WANDA
pruning of deltas; AdamR (DAREx-L2); compact storage of the pruned delta. ``python -m darex --help``
lists the reproduction and the ``prune`` command. See README.md.
"""

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

# The names below load on first use (PEP 562), so that ``python -m darex --help`` does not wait for torch.
_METHOD = [
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
    "lora_delta_parameters",
    "magnitude_prune",
    "optimise_layer_q",
    "output_change",
    "q_grid",
    "search_global_q",
    "wanda_prune",
]
_STORAGE = ["load_sparse_delta", "pruned_model", "save_pruned", "save_sparse_delta"]
_EXPORTS = {"AdamR": "adamr", **dict.fromkeys(_METHOD, "method"), **dict.fromkeys(_STORAGE, "storage")}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
