"""The decoder path of the `paper` preset: a causal LM pair pruned with DARE / DAREx-q (global q), on GSM8K.

DAREx recommends a global q for decoders (official README). As in the official decoder scripts:

- deltas are every parameter under ``mlp`` and ``self_attn`` (``decoder.include``), weights and biases alike
  (Qwen2's q/k/v biases are pruned too); embeddings, norms and the LM head keep their fine-tuned values;
- q is chosen on the first ``n_val`` GSM8K *train* questions (labelled: answer accuracy), or without labels
  by the MSE of the fine-tuned model's top-5 logits between the fine-tuned and the pruned model;
- answers are generated greedily with MetaMath's Alpaca prompt and read after "The answer is:".

Deviations, each deliberate: the label-free proxy reads windows of GSM8K *train* text (the official code
cuts them from the first 101 test items, a test-set leak); generation uses transformers' ``generate``
rather than vLLM (slower, same greedy decoding). Models are read from local directories only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common import distributed as dist
from common.cli import RunContext
from common.data import DatasetNotFoundError
from common.errors import IncompatibleModelsError, UserError
from common.results import RunRecord
from common.runtime import generator, progress

from .checks import decoder_input_checks, load_or_explain, require_model_dir, run_checks
from .config import TINY_BERT, TINY_LLAMA, DarexConfig, DecoderConfig
from .data import DataFileError
from .method import DeltaMismatchError, Deltas, dare, delta_parameters, delta_statistics, global_q_search
from .models import load_tokenizer as load_model_tokenizer
from .regimes import search_options

log = logging.getLogger(__name__)

DECODER_TABLE = "Decoder: GSM8K accuracy after delta-parameter pruning (global q)"
DECODER_REFS = "Decoder: unpruned references"
DECODER_Q = "Decoder: chosen rescaling factors"
DROPPED = "pre-trained weights + fine-tuned embeddings/head (all deltas dropped)"
METHODS = {
    "dare": "DARE (1/(1-p))",
    "labelled": "DAREx-q, global q on labelled GSM8K-train questions",
    "unlabelled": "DAREx-q, global q by top-5 logit change (no labels)",
}

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{question}\n\n### Response: Let's think step by step."
)
PROMPTS = {"alpaca": ALPACA, "plain": "Question: {question}\nAnswer:"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ----------------------------------------------------------------------------------------------------
# GSM8K


@dataclass(frozen=True)
class Problem:
    question: str
    answer: float
    solution: str = ""


def parse_number(text: str) -> float | None:
    """The first number in ``text`` (commas as thousands separators), or None."""
    match = _NUMBER.search(text)
    if not match:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


def read_gsm8k(path: str | Path, n: int = 0) -> list[Problem]:
    """GSM8K items from a JSON-lines file with ``question`` and ``answer`` (the solution ending in
    ``#### <number>``), as in the official release; the first ``n`` (0 = all)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"GSM8K file {path} does not exist (JSON lines with 'question' and 'answer')")
    problems = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if "question" not in row or "answer" not in row:
            raise DataFileError(f"{path}:{i + 1}: need 'question' and 'answer' fields, got {sorted(row)}")
        solution = str(row["answer"])
        final = parse_number(solution.rsplit("####", 1)[-1])
        if final is None:
            raise DataFileError(f"{path}:{i + 1}: the answer has no final number after '####'")
        problems.append(Problem(question=row["question"], answer=final, solution=solution))
        if n and len(problems) == n:
            break
    if not problems:
        raise DataFileError(f"{path} holds no problems")
    return problems


def extract_answer(completion: str, marker: str) -> float | None:
    """The number after the last ``marker`` in ``completion``; without the marker, the last number."""
    if marker and marker in completion:
        return parse_number(completion.rsplit(marker, 1)[-1])
    numbers = _NUMBER.findall(completion)
    return parse_number(numbers[-1]) if numbers else None


# ----------------------------------------------------------------------------------------------------
# Models


def tiny_llama_config(vocab_size: int):
    """A 2-layer Llama with random weights: the tests' stand-in for a causal LM pair."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=101, eos_token_id=102,
    )  # fmt: skip


def load_causal_lm(path: str, dtype: torch.dtype, role: str, vocab_size: int = 0, device_map: str = "") -> nn.Module:
    """A causal LM from a local directory; ``tiny-llama`` builds one (the fine-tuned one perturbed). A
    ``device_map`` (e.g. ``"auto"``) places it with accelerate's big-model loading (``from_pretrained``)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if path == TINY_LLAMA:
        torch.manual_seed(1_000_003)
        model = LlamaForCausalLM(tiny_llama_config(vocab_size))
        if role == "finetuned":
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "mlp" in name or "self_attn" in name:
                        param.add_(0.02 * torch.randn(param.shape, generator=generator(7)))
        return model.to(dtype).eval()
    key = f"decoder.{role}_path"
    require_model_dir(path, key, hint=f"Put a Hugging Face causal LM directory there and pass --set {key}=...")
    kwargs = {"device_map": device_map} if device_map else {}
    return load_or_explain(
        lambda: AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **kwargs),
        key,
        path,
    ).eval()


def load_tokenizer(path: str):
    """The tokenizer of ``path`` (MiniLM's for the tiny Llama), padding on the left for generation."""
    tokenizer = load_model_tokenizer(TINY_BERT if path == TINY_LLAMA else path, what="decoder.finetuned_path")
    tokenizer.padding_side = "left"  # generation continues the prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


# ----------------------------------------------------------------------------------------------------
# Scoring pruned deltas


class DecoderBench:
    """θ_P + Δ̂ loaded into the fine-tuned model (non-delta tensors keep their fine-tuned values).

    The fine-tuned model sits on ``device``, or, with ``decoder.device_map`` (e.g. ``auto``), spread over every
    visible GPU by accelerate's big-model loading; θ_P and Δ of each delta tensor live where that tensor lives.
    Under a launcher (``NPROC=N``) each rank holds a whole model and generates every N-th answer
    (:meth:`accuracy`); the counts are summed over the ranks.
    """

    def __init__(self, dc: DecoderConfig, device: torch.device):
        self.dc = dc
        dtype = getattr(torch, dc.dtype)
        self.tokenizer = load_tokenizer(dc.finetuned_path)
        vocab = len(self.tokenizer)
        base = load_causal_lm(dc.base_path, dtype, "base", vocab)
        placement = {"device_map": dc.device_map} if dc.device_map else {}
        self.model = load_causal_lm(dc.finetuned_path, dtype, "finetuned", vocab, **placement)
        if not dc.device_map:
            self.model.to(device)
        self.device = self.model.get_input_embeddings().weight.device  # where the inputs go
        where = {n: t.device for n, t in self.model.named_parameters()}
        # Every parameter the include rule matches is a delta, weights and biases alike (the official decoder
        # code prunes every tensor under mlp/self_attn, so Qwen2's q/k/v biases too).
        include = re.compile(dc.include)
        finetuned = {n: t.detach() for n, t in self.model.named_parameters() if include.search(n)}
        if not finetuned:
            raise UserError(f"decoder.include={dc.include!r} matches no parameter of {dc.finetuned_path}")
        # θ_P of the delta tensors, each where the fine-tuned tensor is
        self.base = {n: t.detach().to(where[n]) for n, t in base.named_parameters() if include.search(n)}
        del base
        try:
            self.deltas = delta_parameters(self.base, finetuned, exclude=None)
        except DeltaMismatchError as err:
            if dc.base_path == TINY_LLAMA and dc.finetuned_path == TINY_LLAMA:
                raise  # both built here by load_causal_lm: a mismatch is a bug, keep the traceback
            # at least one directory is the user's: a user error (one line, exit 2)
            raise IncompatibleModelsError(
                f"decoder.base_path {dc.base_path} and decoder.finetuned_path {dc.finetuned_path}: {err}"
            ) from err
        self.windows = None
        self.reference = None

    def load(self, pruned: Deltas) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, delta in pruned.items():
                params[name].copy_(self.base[name].float() + delta)

    @torch.no_grad()
    def accuracy(self, pruned: Deltas, problems: Sequence[Problem], desc: str) -> float:
        """Percent of ``problems`` answered correctly; this rank generates its share (every N-th problem under a
        launcher, all of them otherwise) and the counts are summed over the ranks, so every rank returns the
        accuracy on all of ``problems``."""
        self.load(pruned)
        dc, tok = self.dc, self.tokenizer
        mine = dist.shard(problems)
        prompts = [PROMPTS[dc.prompt].format(question=p.question) for p in mine]
        correct = 0
        for start in progress(range(0, len(prompts), dc.batch_size), desc=desc, leave=False):
            chunk = prompts[start : start + dc.batch_size]
            batch = tok(chunk, return_tensors="pt", padding=True, return_token_type_ids=False).to(self.device)
            out = self.model.generate(**batch, max_new_tokens=dc.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id)  # fmt: skip
            texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for text, problem in zip(texts, mine[start : start + dc.batch_size], strict=True):
                answer = extract_answer(text, dc.answer_marker)
                correct += answer is not None and abs(answer - problem.answer) < 1e-6
        # NCCL reduces CUDA tensors only: the count travels on this rank's device (float64 counts are exact)
        total = dist.all_reduce(torch.tensor([float(correct)], dtype=torch.float64, device=self.device))
        return 100.0 * float(total[0]) / len(problems)

    @torch.no_grad()
    def _top_logits(self) -> torch.Tensor:
        logits = [self.model(input_ids=w.to(self.device)).logits.float() for w in self.windows.split(4)]
        return torch.cat(logits)

    def set_reference(self, texts: Sequence[str]) -> None:
        """Fine-tuned top-k logits on packed windows of ``texts`` (the label-free objective's target)."""
        from .data import packed_windows

        self.windows = packed_windows(self.tokenizer, texts, self.dc.proxy_window, self.dc.proxy_windows,
                                      fewer_ok=True)  # fmt: skip
        self.load(self.deltas)
        full = self._top_logits()
        self.reference = full.topk(self.dc.top_k, dim=-1)

    def logit_change(self, pruned: Deltas) -> float:
        """MSE between the pruned and the fine-tuned model's logits at the fine-tuned top-k tokens."""
        self.load(pruned)
        logits = self._top_logits().gather(-1, self.reference.indices)
        return torch.mean((logits - self.reference.values) ** 2).item()


# ----------------------------------------------------------------------------------------------------
# The experiment


def run(cfg: DarexConfig, ctx: RunContext) -> RunRecord:
    dc, pc = cfg.decoder, cfg.prune
    run_checks(decoder_input_checks(dc))  # every path, before any model is loaded
    if dc.device_map and dist.world_size() > 1:
        raise UserError(
            f"decoder.device_map={dc.device_map!r} spreads one model over every GPU of one process; under a "
            "launcher (NPROC) each rank holds a whole model. Use one or the other."
        )
    val = read_gsm8k(dc.val_file, dc.n_val)
    test = read_gsm8k(dc.test_file, dc.n_test)
    proxy_texts = [p.question + " " + p.solution for p in read_gsm8k(dc.val_file, dc.proxy_items)]
    bench = DecoderBench(dc, ctx.device)
    bench.set_reference(proxy_texts)
    record = ctx.new_record(seeds=list(dc.mask_seeds))
    record.extra.update(experiment="decoder", sizes={"val": len(val), "test": len(test)},
                        delta_statistics=delta_statistics(bench.deltas))  # fmt: skip

    ft = bench.accuracy(bench.deltas, test, "fine-tuned")
    dropped = bench.accuracy({n: torch.zeros_like(d) for n, d in bench.deltas.items()}, test, "base")
    record.add(DECODER_REFS, "fine-tuned (unpruned)", "accuracy", ft, unit="%")
    record.add(DECODER_REFS, DROPPED, "accuracy", dropped, unit="%")
    probe = dc.mask_seeds[0]  # q is chosen with the first mask, as in the encoder experiment
    for p in pc.rates:
        q_lab, _ = global_q_search(
            lambda q, p=p: bench.accuracy(dare(bench.deltas, p, q, generator(probe)), val, f"val q={q:.3g}"),
            p, **search_options(pc),
        )  # fmt: skip
        q_free, _ = global_q_search(
            lambda q, p=p: -bench.logit_change(dare(bench.deltas, p, q, generator(probe))),
            p, **search_options(pc),
        )  # fmt: skip
        chosen = {"dare": 1.0 - p, "labelled": q_lab, "unlabelled": q_free}
        for method, q in chosen.items():
            scores = [
                bench.accuracy(dare(bench.deltas, p, q, generator(seed)), test, f"{method} p={p}")
                for seed in dc.mask_seeds
            ]
            record.add(DECODER_TABLE, METHODS[method], f"accuracy, p={p}", scores, seeds=list(dc.mask_seeds), unit="%")
            if method != "dare":
                record.add(DECODER_Q, METHODS[method], f"1/q at p={p} (DARE: {1 / (1 - p):.4g})", 1.0 / q)
        log.info("decoder p=%g: %s", p, {m: round(1 / q, 2) for m, q in chosen.items()})
    _claim(record, cfg)
    return record


def _claim(record: RunRecord, cfg: DarexConfig) -> None:
    from .claims import decoder_recovery

    j = decoder_recovery(record)
    record.claim(j.claim, paper_evidence=j.paper_evidence, our_evidence=j.our_evidence, judgement=j.judgement, id=j.id)
