"""``python -m common.launch --nproc N -m <paper> reproduce ...``: what ``make reproduce-<paper> NPROC=N`` runs.

With CUDA and at least N GPUs it hands over to ``accelerate launch --multi_gpu --num_processes N`` (bf16 mixed
precision unless ``--mixed-precision`` says otherwise); without CUDA it starts N CPU processes with torch's own
launcher (gloo; accelerate's ``launch --cpu`` starts one process only) and tells accelerate to stay on the CPU.
Either way each process runs the paper's CLI, which reads its rank from ``common.distributed``. ``--nproc 1``
runs the command in this process's stead, as if no launcher were involved.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError


def build_command(nproc: int, module_args: list[str], cuda_devices: int, mixed_precision: str) -> tuple[list, dict]:
    """The launcher command line and the extra environment for ``nproc`` processes."""
    if nproc < 1:
        raise UserError(f"NPROC must be at least 1, got {nproc}")
    py = sys.executable
    if nproc == 1:
        return [py, *module_args], {}
    if cuda_devices:
        if cuda_devices < nproc:
            raise UserError(
                f"NPROC={nproc} but this machine has {cuda_devices} CUDA device(s); use NPROC<={cuda_devices}"
            )
        return [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
                *module_args], {}  # fmt: skip
    return [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *module_args], {
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.launch",
        description="Run a paper's command in N data-parallel processes (GPUs via accelerate, else CPU/gloo).",
        epilog="example: python -m common.launch --nproc 2 -m nvit reproduce --preset smoke",
    )
    parser.add_argument("--nproc", type=int, required=True, help="number of processes (one per GPU on CUDA)")
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "fp16", "bf16"),
                        help="on CUDA: accelerate's mixed precision (default bf16)")  # fmt: skip
    parser.add_argument("-m", dest="module", required=True, help="the paper package to run, e.g. nvit")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, e.g. reproduce --preset paper")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        cmd, env = build_command(args.nproc, ["-m", args.module, *args.args], cuda, args.mixed_precision)
    except UserError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    print("launch: " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, {**os.environ, **env})
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
