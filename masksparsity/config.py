"""Configs and the three presets of the MaskSparsity reproduction.

Every field carries help text (``python -m masksparsity presets mini`` lists them). New fields must
default to the value that reproduces the results already recorded (see ../README.md, "Conventions").

The pipeline the fields describe (the official repository's six steps, README of
CASIA-IVA-Lab/MaskSparsity): train a baseline (``train``); run global sparse regularization on the BN
scaling factors γ (Network Slimming) to obtain a pruning mask (``sparsity.mask_*``); train again with
the penalty on the masked γ only (MaskSparsity, ``sparsity``); prune (``prune``); fine-tune
(``finetune``). ``arms`` says which comparisons run beside the method. Within one seed, every pruned
arm is pruned with the same mask, so all pruned arms have the same architecture, FLOPs and params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import param


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it is, and which subset of it."""

    dataset: Literal["fashion_mnist", "cifar10", "imagenet"] = param(
        "fashion_mnist", "fashion_mnist (offline, CPU presets), cifar10 or imagenet (paper preset, local path)"
    )
    root: str = param(
        "",
        "dataset folder. fashion_mnist: the IDX .gz files, empty = the project's shared copy; cifar10: the folder "
        "holding cifar-10-batches-py/ (torchvision's layout); imagenet: a folder with train/ and val/ class "
        "sub-folders. cifar10/imagenet are never downloaded: empty = fail with a message saying what to put where",
    )
    train_subset: int = param(0, "class-balanced subset of the training set (images); 0 = all")
    val_subset: int = param(
        0,
        "images held out of the training set (class-balanced, disjoint from the training subset) on which "
        "hyper-parameters are picked (Network Slimming's best λ); 0 = no validation split (then λ is picked on the "
        "test set and the claim that needs the pick is not testable)",
    )
    test_subset: int = param(0, "class-balanced subset of the test/val set (images); 0 = all")
    quick_test_subset: int = param(
        0,
        "class-balanced subset of the test (sub)set on which accuracy before and right after pruning (raw, "
        "folded, BN re-estimated) is measured, to save time (those accuracies differ by tens of points); accuracy "
        "after fine-tuning always uses the whole test (sub)set; 0 = the whole test (sub)set everywhere",
    )
    train_eval_subset: int = param(
        0,
        "training images (no augmentation) on which train loss/accuracy are measured at the end of each phase, "
        "for the under-fitting claim; 0 = the whole training (sub)set",
    )
    subset_seed: int = param(0, "seed of the subsets; the same subsets are used for every run seed")
    augment: bool = param(
        True,
        "standard training augmentation: fashion_mnist pad-2 random crop + flip; cifar10 pad-4 random crop 32 "
        "+ flip; imagenet RandomResizedCrop 224 + flip (val: resize 256, centre crop 224)",
    )
    workers: int = param(0, "data-loader worker processes (0 = load in the main process)")
    image_size: int = param(
        0, "fashion_mnist only: resize the 28x28 images to this size by area averaging (CPU budget); 0 = native 28"
    )


@dataclass(frozen=True)
class ModelConfig:
    """The network that is pruned."""

    arch: str = param(
        "resnet20",
        "resnet<6n+2> (CIFAR-style ResNet with basic blocks and stages of width w, 2w, 4w: resnet20, resnet56, "
        "resnet110, ...) or resnet50 (ImageNet bottleneck ResNet, base width 64)",
    )
    width: int = param(16, "base width w of the CIFAR-style ResNet (the paper's ResNet-56/110: 16); unused by resnet50")
    shortcut: Literal["projection", "zero_pad"] = param(
        "projection",
        "CIFAR-style ResNet shortcut where the shape changes: projection = 1x1 conv + BN (pycls ResStemCifar "
        "code base, option B), zero_pad = parameter-free option A",
    )
    zero_init_last_bn: bool = param(
        True, "initialise the last BN γ of every residual branch to 0 (pycls BN.ZERO_INIT_FINAL_GAMMA, official)"
    )


@dataclass(frozen=True)
class Schedule:
    """SGD and learning-rate schedule of one training phase (baseline, sparsity training or fine-tuning)."""

    epochs: int = param(100, "training epochs of this phase")
    batch_size: int = param(256, "images per SGD step")
    lr: float = param(0.1, "initial learning rate")
    lr_schedule: Literal["step", "cosine"] = param("step", "step: x lr_decay at each of lr_steps; cosine: to 0")
    lr_steps: tuple[int, ...] = param((30, 60, 90), "epochs at which a step schedule multiplies the lr by lr_decay")
    lr_decay: float = param(0.1, "factor of each step of a step schedule (pycls LR_MULT)")
    momentum: float = param(0.9, "SGD momentum")
    nesterov: bool = param(True, "Nesterov momentum (official configs: yes)")
    weight_decay: float = param(1e-4, "SGD weight decay, applied to every parameter including BN γ and β (official)")
    precise_bn_images: int = param(
        0, "recompute BN statistics on this many training images after every epoch (pycls precise BN: 8192); 0 = off"
    )


@dataclass(frozen=True)
class SparsityConfig:
    """Sparse regularization of the BN scaling factors γ, and the pruning mask it is told to act on.

    The penalty enters as a sub-gradient added to grad(γ) after backward and before the optimizer step:
    Network Slimming adds λ·g'(γ) to every γ; MaskSparsity adds it only to the γ of the channels the mask
    marks for pruning (notes §1.2; g = |γ| for L1).
    """

    schedule: Schedule = param(Schedule(), "schedule of the sparsity-training phase (official: the baseline's)")
    slimming_lambdas: tuple[float, ...] = param(
        (5e-4,), "λ of global sparse regularization (Network Slimming), one run per value (official: 5e-4)"
    )
    masksparsity_lambda: float = param(5e-4, "λ of MaskSparsity's penalty on the masked γ (official: 5e-4)")
    norm: Literal["L1", "L2", "smoothL1", "huber"] = param(
        "L1",
        "penalty g(γ): L1 adds λ·sign(γ) (official default, every official script); L2 adds λ·γ; smoothL1 is the "
        "official code's: λ·γ where |γ| < lr·λ and λ·sign(γ) elsewhere, lr = the epoch's learning rate; huber is "
        "the Huber form with δ = lr·λ (γ/lr inside, λ·sign(γ) outside; our earlier reading of smoothL1)",
    )
    regularize_beta: bool = param(
        False, "also penalise β of the masked channels (not in the paper; removed channels otherwise feed relu(β))"
    )
    slimming_scope: Literal["all_bn", "prunable_bn"] = param(
        "all_bn", "which γ Network Slimming penalises: every BN (official: all 53 BNs of ResNet-50) or prunable ones"
    )
    mask_source: Literal["slimming", "uniform"] = param(
        "slimming",
        "how the pruning mask is obtained: slimming = smallest |γ| after the Network Slimming run at mask_lambda "
        "(official); uniform = every prunable BN keeps the same fraction, lowest baseline |γ| removed (the repo's "
        "uniform mask keeps 2/3; its channel criterion is not documented; needs mask_rule=flops_target)",
    )
    mask_lambda: float = param(5e-4, "λ of the Network Slimming run whose γ define the mask (one of slimming_lambdas)")
    mask_rule: Literal["threshold", "flops_target"] = param(
        "threshold",
        "threshold: mask the channels with |γ| <= mask_threshold, layer by layer (official prune.sh); "
        "flops_target: mask the globally smallest |γ| until each target in flops_reductions is met",
    )
    mask_threshold: float = param(0.01, "absolute |γ| threshold of mask_rule=threshold (official: 0.01)")
    flops_reductions: tuple[float, ...] = param(
        (), "operating points of mask_rule=flops_target: fraction of the dense model's FLOPs (MACs) removed"
    )
    start_from: Literal["baseline", "slimming"] = param(
        "baseline",
        "weights MaskSparsity training starts from: the baseline (earlier official README) or the Network "
        "Slimming model at mask_lambda (a variant the final README may use)",
    )


@dataclass(frozen=True)
class PruneConfig:
    """Physical removal of channels (with their producer filters and consumer inputs)."""

    rule: Literal["mask", "threshold"] = param(
        "threshold",
        "which channels are removed: mask = exactly the mask's for MaskSparsity, the control and the directly pruned "
        "baseline (identical architectures), and for each Network Slimming run the mask built the same way from its "
        "own γ (same FLOPs target); threshold = each arm's |γ| <= threshold after its sparsity phase (official "
        "prune.sh; recovers MaskSparsity's mask approximately)",
    )
    threshold: float = param(0.01, "|γ| threshold of rule=threshold; also reported: fraction of masked γ below it")
    residual_groups: bool = param(
        True,
        "also prune the residual streams: one shared keep-mask per stage for the BNs that meet at the additions, "
        "chosen by the repo's conservative agreement rule (official PRUNE_RESIDUAL); False = only channels "
        "inside residual branches",
    )
    min_channels: int = param(1, "channels every pruned layer keeps at least (official MIN_CHANNELS)")
    fold_beta: bool = param(
        False,
        "also report accuracy after folding relu(β) of removed channels into the next layer (not in the official "
        "code; exact away from zero-padded borders)",
    )
    bn_recalibration_images: int = param(
        0, "also report accuracy after re-estimating BN statistics on this many training images; 0 = off"
    )
    flops_counter: Literal["conv_linear", "official"] = param(
        "conv_linear",
        "how the FLOPs (MACs) reductions printed beside the paper's are counted: conv_linear = convolutions and "
        "linear layers only (common.counting, the pruning literature's usual MACs); official = the official "
        "code's counter (netslim/flops_counter.py): also BN (2 per element) and ReLU (1 per element), no pooling "
        "(flops.official_macs). Either way the per-arm tables also show conv+linear",
    )
    latency_batch: int = param(128, "batch size at which the pruned model's speedup over the dense one is timed")
    latency_rounds: int = param(20, "interleaved timing rounds (common.latency.compare_latency)")


@dataclass(frozen=True)
class ArmsConfig:
    """Which arms run. The baseline is always trained and reported: every arm starts from it."""

    network_slimming: bool = param(
        True,
        "global sparse regularization (Liu et al. 2017), one run per λ in sparsity.slimming_lambdas, each pruned "
        "with a mask from its own γ (same FLOPs target or threshold), fine-tuned; the best λ is picked on the "
        "validation split (data.val_subset)",
    )
    masksparsity: bool = param(True, "the method: penalty on the masked γ only, pruned with the mask, fine-tuned")
    no_regularization: bool = param(
        False,
        "control (not in the paper): the sparsity phase's epochs without any penalty, pruned with the same mask, "
        "fine-tuned; separates the effect of the extra epochs from that of the regularization",
    )
    direct_prune: bool = param(
        False,
        "the baseline pruned with the same mask and fine-tuned (no sparsity phase, so fewer epochs than every other "
        "arm: a reference, not a competitor)",
    )
    scratch: bool = param(
        False,
        "ablation of the official code (scratch.sh): the pruned architecture trained from random init for the "
        "same total epochs as the other arms (baseline + sparsity phase + fine-tuning)",
    )
    dense_reference: bool = param(
        False,
        "the no-regularization control, unpruned, trained for the fine-tuning epochs too: the unpruned model with "
        "the same total epochs as every pruned arm (the reference of 'no top-1 loss')",
    )


@dataclass(frozen=True)
class MaskSparsityConfig:
    """One MaskSparsity experiment: one (model, dataset) setting, its phases and its arms."""

    seeds: tuple[int, ...] = param((0, 1, 2), "run seeds (each: the whole pipeline); tables report mean ± std")
    data: DataConfig = param(DataConfig(), "dataset and subsets")
    model: ModelConfig = param(ModelConfig(), "architecture")
    train: Schedule = param(Schedule(), "baseline training (official: 100 epochs, lr 0.1, steps 30/60/90, batch 256)")
    sparsity: SparsityConfig = param(SparsityConfig(), "sparsity training and the pruning mask")
    prune: PruneConfig = param(PruneConfig(), "channel removal")
    finetune: Schedule = param(
        Schedule(epochs=40, lr=5e-4, lr_steps=(10, 20, 30)),
        "fine-tuning of every pruned model, no penalty (default: the repo's fine-tuning yaml, 40 epochs, lr 5e-4, "
        "x0.1 every 10; paper: finetune.sh's 100-epoch step config at lr 5e-4, FINETUNE_SCRIPT)",
    )
    arms: ArmsConfig = param(ArmsConfig(), "which arms run")
    amp: bool = param(False, "bfloat16 autocast on CUDA (the γ sub-gradient stays fp32); the official code used fp32")
    accumulation: int = param(
        1,
        "gradient accumulation: each process's share of every training batch is split into this many micro-batches "
        "(one optimizer step per batch), so the official batch of 256 fits fewer or smaller GPUs; BatchNorm then "
        "uses the statistics of each global micro-batch (batch / accumulation images)",
    )


FINETUNE_SCRIPT = Schedule(epochs=100, lr=5e-4, lr_steps=(30, 60, 90), precise_bn_images=8192)
"""The official ``finetune.sh``: the 100-epoch step config (R-50-1x64d_step_8gpu_sparse.yaml: x0.1 at 30/60/90)
with OPTIM.BASE_LR 5e-4 (the README's example value). What ``paper`` fine-tunes with."""

FINETUNE_YAML = Schedule(epochs=40, lr=5e-4, lr_steps=(10, 20, 30), precise_bn_images=8192)
"""The repository's dedicated fine-tuning config (R-50-1x64d_step_8gpu_finetune.yaml: 40 epochs, lr 5e-4, x0.1 at
10/20/30), which no script uses. ``paper`` with it: ``--set finetune.epochs=40 --set "finetune.lr_steps=(10, 20,
30)"``."""


def smoke() -> MaskSparsityConfig:
    """Seconds on a CPU; used by the tests: every arm and both operating points on a tiny ResNet-8.

    Command: ``make reproduce-masksparsity PRESET=smoke``. Hardware: any CPU. Time: < 60 s.
    Targets: nothing numerically; checks that the pipeline writes a valid record.
    """
    lam = 5e-2
    tiny = Schedule(epochs=1, batch_size=64, lr=0.05, lr_schedule="cosine", lr_steps=())
    return MaskSparsityConfig(
        seeds=(0,),
        data=DataConfig(
            train_subset=256, val_subset=128, test_subset=256, quick_test_subset=128, train_eval_subset=256
        ),
        model=ModelConfig(arch="resnet8", width=4),
        train=tiny,
        sparsity=SparsityConfig(
            schedule=tiny,
            slimming_lambdas=(lam / 2, lam),
            masksparsity_lambda=lam,
            mask_lambda=lam,
            mask_rule="flops_target",
            flops_reductions=(0.50, 0.63),
        ),
        prune=PruneConfig(
            rule="mask", residual_groups=False, fold_beta=True, bn_recalibration_images=128, latency_rounds=3
        ),
        finetune=tiny,
        arms=ArmsConfig(no_regularization=True, direct_prune=True, scratch=True, dense_reference=True),
    )


def mini() -> MaskSparsityConfig:
    """The default of ``make reproduce-masksparsity``: ResNet-20 (width 8) on 3k Fashion-MNIST images at 14x14.

    Arms, all with the same total epochs (10 baseline + 8 sparsity phase + 3 fine-tuning): Network Slimming at
    λ in {1e-2, 2e-2}, each pruned with a mask from its own γ, the best λ picked on a 1,000-image validation
    split held out of the training set; MaskSparsity (λ 2e-2) with the mask of the Network Slimming run at
    λ 2e-2 (global smallest |γ|, inner channels of the basic blocks); a no-regularization control pruned with
    MaskSparsity's mask; the control unpruned and fine-tuned too (the dense reference). Operating points 50 %
    and 63 % FLOPs reduction (the abstract's ResNet-50 and ResNet-110 points). λ is scaled up from the paper's
    5e-4 because the L1 drift of γ grows with steps x lr x λ: ~190 steps here vs ~500k in the paper (notes
    §5.7). Images are area-downsampled to 14x14. Six seeds (two replication halves of three) run in two
    single-thread worker processes; the speedups are timed afterwards in the main process alone. Accuracy
    after fine-tuning is measured on all 10,000 test images, before and right after pruning on a 1,000-image
    subset of them. Command: ``make reproduce-masksparsity``. Hardware: 2-core CPU. Time: budget 15 min (idle
    2-core machine, empty cache); every timed run is in results/README.md ("Run time against the budgets").
    Targets: the paper's qualitative claims (NS under-fits, MaskSparsity does not; smaller drop right after
    pruning; at least as accurate as the best Network Slimming at equal FLOPs; better than the same epochs
    without the penalty; no loss at 63 % FLOPs removed); the abstract's operating points.
    The official path (each run thresholded on its own γ, residual groups) is not part of ``mini``; see the
    README for its command.
    """
    lambdas = (1e-2, 2e-2)
    cosine = {"batch_size": 128, "lr_schedule": "cosine", "lr_steps": ()}
    return MaskSparsityConfig(
        seeds=(0, 1, 2, 3, 4, 5),
        data=DataConfig(
            train_subset=3000,
            val_subset=1000,
            test_subset=0,
            quick_test_subset=1000,
            train_eval_subset=0,
            image_size=14,
        ),
        model=ModelConfig(arch="resnet20", width=8),
        train=Schedule(epochs=10, lr=0.1, **cosine),
        sparsity=SparsityConfig(
            schedule=Schedule(epochs=8, lr=0.1, **cosine),
            slimming_lambdas=lambdas,
            masksparsity_lambda=2e-2,
            mask_lambda=2e-2,
            mask_rule="flops_target",
            flops_reductions=(0.50, 0.63),
        ),
        prune=PruneConfig(rule="mask", residual_groups=False, fold_beta=True, bn_recalibration_images=1000),
        finetune=Schedule(epochs=3, lr=0.05, **cosine),
        arms=ArmsConfig(no_regularization=True, dense_reference=True),
    )


def paper() -> MaskSparsityConfig:
    """ResNet-110 on CIFAR-10 from a local folder, official recipe (abstract: 63.03 % FLOPs removed), for GPUs.

    Command: ``make reproduce-masksparsity PRESET=paper ARGS="--set data.root=/path/to/cifar10"``.
    ResNet-56: add ``--set model.arch=resnet56`` to ARGS.
    ResNet-50 on ImageNet: ``make reproduce-masksparsity PRESET=paper ARGS="--set data.dataset=imagenet
    --set model.arch=resnet50 --set data.root=/path/to/imagenet --set data.workers=16"`` (one line).
    Recipe: the repo's ImageNet ResNet-50 configs: SGD Nesterov, lr 0.1, batch 256, 100 epochs, x0.1 at
    30/60/90, wd 1e-4, precise BN; global L1 λ 5e-4; mask |γ| <= 0.01 with residual groups; MaskSparsity
    λ 5e-4 from the baseline; prune |γ| <= 0.01; fine-tune as finetune.sh does: the 100-epoch step config at
    lr 5e-4 (x0.1 at 30/60/90; ``FINETUNE_SCRIPT``; the repo's unused 40-epoch fine-tuning yaml is
    ``FINETUNE_YAML``: ``--set finetune.epochs=40 --set "finetune.lr_steps=(10, 20, 30)"``). FLOPs beside the
    paper's are counted as the official counter does (conv, linear, BN, ReLU). The repo has no CIFAR-10
    recipe, so CIFAR-10 uses the same one (a planned deviation, see README).
    Hardware: one GPU. Time: ResNet-56/110 a few GPU-hours; ResNet-50 several GPU-days (estimates).
    Targets: the abstract (ResNet-110 CIFAR-10: 63.03 % FLOPs and 60.34 % params removed, no top-1 loss;
    ResNet-50 ImageNet: > 51.07 % FLOPs removed, -0.76 top-1); the paper's tables could not be read here.
    """
    return MaskSparsityConfig(
        seeds=(0,),
        data=DataConfig(dataset="cifar10", root="", workers=8),
        model=ModelConfig(arch="resnet110", width=16),
        train=Schedule(precise_bn_images=8192),
        sparsity=SparsityConfig(schedule=Schedule(precise_bn_images=8192)),
        prune=PruneConfig(bn_recalibration_images=8192, flops_counter="official"),
        finetune=FINETUNE_SCRIPT,
        arms=ArmsConfig(),
    )


PRESETS = {"smoke": smoke, "mini": mini, "paper": paper}
