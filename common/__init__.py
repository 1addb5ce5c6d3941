"""Shared, paper-agnostic building blocks: config, runtime, data, latency, counting, results, plots.

Kept deliberately small (see ../README.md): only what several paper packages need and what does not
depend on any one paper. No trainer, no registry, no global state beyond environment defaults.
"""

import os

# OpenMP busy-waits by default; with 2 cores and any other busy process that makes small torch ops
# 10-35x slower (../shared/ENVIRONMENT.md). It must be set before torch is first imported, which is why
# it lives here: every paper package imports `common` before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
