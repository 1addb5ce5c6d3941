"""``python -m darex prune``: prune a fine-tuned model's deltas against its base, evaluate, save.

Example (local directories only; nothing is downloaded)::

    python -m darex prune --base /models/bert-base-uncased --finetuned /models/bert-sst2 --rate 0.99 \\
        --rescale labelled --val sst2_val.tsv --eval sst2_dev.tsv --out /models/bert-sst2-p99

``--rescale`` picks the DPP rule: ``dare`` (1/(1-p)), ``q=0.05`` (DAREx-q with a given q), ``labelled``
(global q searched on ``--val``), ``unlabelled`` (global q by the last-layer output change on the
``--val`` texts), ``analytical`` (per-layer q, η by output change), ``magnitude`` or ``wanda``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import torch

from common.errors import IncompatibleModelsError, PathNotFoundError, UserError, require_path
from common.runtime import generator, select_device

from .checks import TOKENIZER_FILES, has_tokenizer, load_or_explain, require_model_dir
from .data import batches, encode, packed_windows, read_labelled_file
from .method import (
    DEFAULT_EXCLUDE,
    DeltaMismatchError,
    analytical_layer_q,
    coarse_to_fine_q,
    collect_input_statistics,
    dare,
    delta_parameters,
    head_inputs,
    kept_fraction,
    magnitude_prune,
    name_list,
    output_change,
    wanda_prune,
)
from .storage import directory_bytes, pruned_model, save_pruned, save_sparse_delta
from .train import METRICS, score

log = logging.getLogger(__name__)

RULES = ("dare", "labelled", "unlabelled", "analytical", "magnitude", "wanda")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="pre-trained model directory (Hugging Face layout)")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model directory (same architecture)")
    parser.add_argument("--rate", type=float, required=True, help="pruning rate p: the fraction of deltas dropped")
    parser.add_argument(
        "--rescale", default="dare", help=f"one of {', '.join(RULES)}, or q=<value> for a fixed DAREx-q rescaling 1/q"
    )
    parser.add_argument("--val", help="labelled file for choosing q (labelled) or unlabelled texts (other rules)")
    parser.add_argument("--eval", help="labelled file to report the metric on (CSV/TSV with header, or JSONL)")
    parser.add_argument("--metric", default="accuracy", choices=list(METRICS), help="task metric")
    parser.add_argument("--out", help="write the pruned model here (save_pretrained) and its sparse delta")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    parser.add_argument("--exclude", default=DEFAULT_EXCLUDE, help="regex of tensors that are not deltas")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")


MODEL_HINT = "Pass a local model directory as save_pretrained writes it (config.json, weights, tokenizer)."
DATA_HINT = "Pass a labelled CSV/TSV file with a header, or a JSON-lines file."


def check_arguments(args: argparse.Namespace) -> None:
    """Every path and pattern the command reads, checked before transformers is called; one line each."""
    require_model_dir(args.base, "--base", hint=MODEL_HINT)
    require_model_dir(args.finetuned, "--finetuned", hint=MODEL_HINT)
    for flag in ("val", "eval"):
        if getattr(args, flag):
            require_path(getattr(args, flag), f"--{flag}", kind="file", hint=DATA_HINT)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out: {args.out} exists and is not a directory; pass a directory to write the model to")
    try:
        re.compile(args.exclude)
    except re.error as err:
        raise UserError(f"--exclude: {args.exclude!r} is not a regular expression ({err})") from None


def _load(path: str, device: torch.device, what: str, exclude: str):
    """The classifier in ``path``; a tensor the checkpoint lacks (transformers would initialise it at random)
    that is not excluded is refused, since its "delta" would be noise."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing tensors are reported below, in one line
    try:
        model, info = load_or_explain(
            lambda: AutoModelForSequenceClassification.from_pretrained(
                path, local_files_only=True, output_loading_info=True
            ),
            what,
            path,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    pattern = re.compile(exclude) if exclude else None
    missing = sorted(n for n in info.get("missing_keys", ()) if not (pattern and pattern.search(n)))
    if missing:
        raise IncompatibleModelsError(
            f"{what}: {path} lacks {len(missing)} tensor(s) of its architecture, which transformers would "
            f"initialise at random ({name_list(missing)}); pass the complete checkpoint, or add them to --exclude "
            "if they are not deltas"
        )
    return model.to(device).eval()


def _load_tokenizer(args: argparse.Namespace):
    """The fine-tuned model's tokenizer, else the base model's (a fine-tune often keeps its base's)."""
    from transformers import AutoTokenizer

    if has_tokenizer(args.finetuned):
        what, path = "--finetuned", args.finetuned
    elif has_tokenizer(args.base):
        log.info("--finetuned %s holds no tokenizer; using the one of --base %s", args.finetuned, args.base)
        what, path = "--base", args.base
    else:
        raise PathNotFoundError(
            f"--finetuned: neither {args.finetuned} nor --base {args.base} holds a tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES[:3])}, ...); save the tokenizer with the model (tokenizer.save_pretrained)"
        )
    return load_or_explain(lambda: AutoTokenizer.from_pretrained(path, local_files_only=True), what, path,
                           "a tokenizer")  # fmt: skip


def handle(args: argparse.Namespace) -> int:
    if not 0.0 <= args.rate < 1.0:
        raise UserError(f"--rate must be in [0, 1), got {args.rate}")
    fixed_q = None
    if args.rescale.startswith("q="):
        try:
            fixed_q = float(args.rescale[2:])
        except ValueError:
            raise UserError(f"--rescale {args.rescale}: q=<value> needs a number, e.g. q=0.05") from None
        if not (1.0 - args.rate) * (1 - 1e-9) <= fixed_q <= 1.0:
            raise UserError(f"--rescale {args.rescale}: q must lie in [1 - p, 1] = [{1 - args.rate:.6g}, 1]")
    elif args.rescale not in RULES:
        raise UserError(f"--rescale must be one of {', '.join(RULES)} or q=<value>, got {args.rescale!r}")
    needs_val = args.rescale in ("labelled", "unlabelled", "analytical", "wanda")
    if needs_val and not args.val:
        raise UserError(f"--rescale {args.rescale} needs --val (labelled sentences to choose q on)")
    check_arguments(args)
    device = select_device(args.device)
    tokenizer = _load_tokenizer(args)
    finetuned = _load(args.finetuned, device, "--finetuned", args.exclude)
    base = _load(args.base, device, "--base", args.exclude)
    try:
        deltas = delta_parameters(base, finetuned, exclude=args.exclude)
    except DeltaMismatchError as err:  # the user's pair: a user error (exit 2), not a bug
        raise IncompatibleModelsError(
            f"--base {args.base} and --finetuned {args.finetuned}: {err} (--exclude sets the rule)"
        ) from err
    pre_state = base.state_dict()
    probe = pruned_model(finetuned, pre_state, deltas)
    head = probe.get_submodule("classifier")
    pad = tokenizer.pad_token_id
    p = args.rate

    val = encode(tokenizer, read_labelled_file(args.val), args.max_length) if args.val else None

    def load(pruned):
        probe.load_state_dict({n: pre_state[n] + d.to(pre_state[n]) for n, d in pruned.items()}, strict=False)

    def representation():
        batch = next(batches(val, min(len(val), 64), pad))
        batch.pop("labels")
        return head_inputs(probe, head, lambda m: m(**{k: v.to(device) for k, v in batch.items()}))

    reference = representation() if val is not None else None

    def change(pruned) -> float:
        load(pruned)
        return output_change(reference, representation())

    def stats():
        texts = [e.text for e in read_labelled_file(args.val)]
        windows = packed_windows(tokenizer, texts, min(args.max_length, 64), 16, fewer_ok=True)
        return collect_input_statistics(probe, lambda m: m(input_ids=windows.to(device)), names=deltas)

    gen = lambda: generator(args.seed)  # noqa: E731
    chosen = {"rule": args.rescale, "rate": p}
    if args.rescale == "dare" or fixed_q is not None:
        pruned = dare(deltas, p, fixed_q, gen())
    elif args.rescale == "labelled":

        def on_val(q):
            load(dare(deltas, p, q, gen()))
            return score(probe, val, pad, args.metric)

        q, _ = coarse_to_fine_q(on_val, p)
        pruned, chosen["q"] = dare(deltas, p, q, gen()), q
    elif args.rescale == "unlabelled":
        q, _ = coarse_to_fine_q(lambda q: -change(dare(deltas, p, q, gen())), p)
        pruned, chosen["q"] = dare(deltas, p, q, gen()), q
    elif args.rescale == "analytical":
        means = {n: s.mean for n, s in stats().items()}
        candidates = {eta: analytical_layer_q(deltas, means, p, eta) for eta in (0.1, 0.3, 0.5, 0.7, 0.9, 1.1)}
        eta = min(candidates, key=lambda e: change(dare(deltas, p, candidates[e], gen())))
        pruned, chosen["eta"] = dare(deltas, p, candidates[eta], gen()), eta
    elif args.rescale == "magnitude":
        pruned = magnitude_prune(deltas, p)
    else:
        pruned = wanda_prune(deltas, p, {n: s.norm for n, s in stats().items()})
    load(pruned)
    chosen["kept_fraction"] = kept_fraction(pruned)
    if args.eval:
        data = encode(tokenizer, read_labelled_file(args.eval), args.max_length)
        chosen[args.metric] = score(probe, data, pad, args.metric)
        load(deltas)
        chosen[f"{args.metric} (unpruned)"] = score(probe, data, pad, args.metric)
        load(pruned)
    if args.out:
        out = save_pruned(probe, args.out, tokenizer)
        sparse = save_sparse_delta(pruned, Path(out) / "sparse_delta.safetensors")
        chosen.update(saved_to=str(out), model_bytes=directory_bytes(out) - sparse, sparse_delta_bytes=sparse)
    print(json.dumps(chosen, indent=2))
    return 0
