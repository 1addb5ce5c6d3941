"""Configs and the three presets of the three-regime reproduction.

The experiment is a grid: each cell is one temperature-like value of the *dense* model (training epochs,
batch size or SAM rho) times one load-like value of the *sparse* model (its density, % of weights kept).
In each cell the dense model is pruned once (one-shot L1 magnitude), retrained with the masks fixed under
several retraining seeds, and the retrained pairs are compared by linear mode connectivity (LMC, ``mc``)
and CKA similarity of their outputs; the regime of the cell follows from (mc, CKA).

Every field carries help text (``python -m three_regime presets mini`` lists them). Values marked
"official" come from the official code (github.com/YefanZhou/ThreeRegimePruning) as summarised in
shared/papers/three_regime.md; the full paper body could not be read offline, so none of them is checked
against the PDF. New fields must default to the value that reproduces the results already recorded
(see ../README.md, "Conventions").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import param


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["mnist1d", "cifar10"] = param(
        "mnist1d", "mnist1d: generated offline by the `mnist1d` package; cifar10: read from `root` (paper)"
    )
    root: str = param(
        "",
        "CIFAR-10 directory for torchvision CIFAR10(download=False) (holds cifar-10-batches-py/); "
        "empty = not needed (mnist1d)",
    )
    num_samples: int = param(5000, "MNIST-1D examples generated, train + test (mnist1d default 5,000 = 4,000 / 1,000)")
    seed: int = param(42, "MNIST-1D generator seed (mnist1d default 42); the same data for every model seed")
    augment: bool = param(
        False,
        "training augmentation: RandomCrop(32, padding 4) + horizontal flip (official CIFAR-10); none for MNIST-1D",
    )
    crop_fill: Literal["mean", "black"] = param(
        "mean",
        "what the random crop's 4-pixel padding holds: black = black pixels, normalised like the image (official: "
        "torchvision RandomCrop before Normalize; the `paper` preset); mean = 0 after normalisation, the mean colour "
        "(this package's first version, the default so older configs keep their meaning; MNIST-1D is not augmented)",
    )


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp_bn", "preresnet"] = param(
        "mlp_bn", "mlp_bn: MLP with BatchNorm (CPU analogue); preresnet: CIFAR PreResNet (the paper's model)"
    )
    depth: int = param(20, "PreResNet depth (6n+2; 20 = 3 blocks per stage, official)")
    width_scale: int = param(1, "PreResNet width multiplier k: stages of 16k/32k/64k channels (1 = PreResNet-20)")
    shortcut_input: Literal["preact", "input"] = param(
        "preact",
        "PreResNet: what the 1x1 projection shortcut (where a stage changes shape) reads: input = the block's raw "
        "input x (official models/cifar/preresnet.py; the `paper` preset), preact = relu(bn1(x)) (this package's "
        "first version, kept as the default so older configs keep their meaning; mlp_bn ignores it)",
    )
    hidden_layers: int = param(4, "mlp_bn: number of hidden Linear+BN+ReLU layers")
    hidden_width: int = param(256, "mlp_bn: units per hidden layer")


@dataclass(frozen=True)
class TrainConfig:
    """Training of the dense (pre-pruned) model."""

    epochs: int = param(160, "dense training epochs; temperature=training_epochs takes checkpoints of this one run")
    iterations: int = param(
        0,
        "if > 0, train for this many SGD steps instead of `epochs`, drop_last batches "
        "(official batch-size study: 62,400 = 160 epochs at batch 128)",
    )
    batch_size: int = param(64, "dense training batch size (official epoch study: 64)")
    lr: float = param(0.1, "initial learning rate, not rescaled with batch size (official: 0.1)")
    momentum: float = param(0.9, "SGD momentum (official: 0.9)")
    weight_decay: float = param(1e-4, "weight decay (official: 1e-4)")
    lr_decay_at: tuple[float, ...] = param(
        (0.5, 0.75),
        "fractions of the training length (epochs, or iterations if `iterations` > 0) at which the "
        "lr is multiplied by lr_decay (official: epochs 80 and 120 of 160)",
    )
    lr_decay: float = param(0.1, "step decay factor (official: 0.1)")
    optimizer: Literal["sgd", "sam"] = param("sgd", "sgd, or SAM (two-step; BN stats frozen on the second pass)")
    sam_rho: float = param(
        0.6,
        "SAM radius rho when optimizer=sam and rho is not the grid's temperature "
        "(official write_experiments default 0.6)",
    )
    sam_adaptive: bool = param(False, "use adaptive SAM (ASAM) instead of SAM (official option, off by default)")


@dataclass(frozen=True)
class PruneConfig:
    scope: Literal["uniform", "global"] = param(
        "uniform",
        "uniform: the same fraction of L1-smallest weights removed in every prunable layer (official "
        "`unif`, used in all official scripts); global: one magnitude threshold over all prunable layers "
        "(official `glob`; removed whole layers at <= 1 % density in the CPU pilot)",
    )
    prune_classifier: bool = param(
        False,
        "also prune the final classifier (official: no; only Conv2d weights, the first conv included, "
        "are pruned; biases and BN never)",
    )


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining of the pruned model from its trained weights, masks fixed, with a rewound lr schedule."""

    seeds: tuple[int, ...] = param(
        (1, 2, 3),
        "retraining seeds per pruned model (differ only in data order/augmentation); LMC and CKA are "
        "measured on every pair of them (official: 1, 2, 3 -> pairs (1,2), (1,3), (2,3))",
    )
    epochs: int = param(160, "retraining epochs (official: 160, the full dense schedule)")
    iterations: int = param(
        0, "if > 0, retrain for this many SGD steps instead of `epochs` (official batch-size study: 62,400)"
    )
    batch_size: int = param(64, "retraining batch size (official: 64 in the epoch study, 128 in the batch-size study)")
    lr: float = param(0.1, "initial retraining lr: the schedule is rewound, not continued (official: 0.1)")
    momentum: float = param(0.9, "SGD momentum (official: 0.9)")
    weight_decay: float = param(1e-4, "weight decay (official: 1e-4)")
    lr_decay_at: tuple[float, ...] = param(
        (0.5, 0.75),
        "fractions of the retraining length at which the lr is multiplied by lr_decay "
        "(official: epochs 80 and 120 of 160)",
    )
    lr_decay: float = param(0.1, "step decay factor (official: 0.1)")
    test_error_last_epochs: int = param(
        5, "reported test error = mean over the last N retraining epochs (official notebook: 5)"
    )


@dataclass(frozen=True)
class MetricsConfig:
    """Loss-landscape metrics between two retrained models that share one pruned starting point."""

    lmc_points: int = param(11, "points t in [0, 1] on the straight line between the two models (official: 11)")
    lmc_samples: int = param(
        0,
        "training examples (no augmentation) used to re-estimate BN statistics and to measure the error at "
        "each point; 0 = the whole training set (official)",
    )
    lmc_bn_reestimate: bool = param(True, "re-estimate BN running statistics at every point of the line (official)")
    bn_batch_size: int = param(
        512,
        "batch size of the BN re-estimation pass over the LMC examples (in order, no augmentation); official "
        "lmc.py: 64 (its --train-batch default; the `paper` preset). 512 = this package's first version (smoke, mini)",
    )
    bn_weighting: Literal["batch", "sample"] = param(
        "batch",
        "how the re-estimated BN statistics average the batches: sample = each batch weighted by its number of "
        "examples (momentum b / (n + b), official mc_utils.update_bn; the `paper` preset); batch = every batch "
        "equally (torch's cumulative average, momentum None; smoke, mini). They differ only through a short last "
        "batch",
    )
    cka_features: Literal["softmax", "logits"] = param(
        "softmax", "outputs compared by linear CKA (official notebook plots softmax)"
    )
    cka_samples: int = param(
        6464, "training examples (no augmentation, no shuffle) for CKA (official: 101 x 64 = 6,464)"
    )
    cka_debiased: bool = param(False, "debiased HSIC instead of the biased estimator (official: biased)")


@dataclass(frozen=True)
class RegimeConfig:
    """Thresholds that turn (mc, CKA) into Regime I / II-A / II-B. Ours: the paper's boundaries are hand-drawn."""

    mc_barrier: float = param(
        0.02,
        "Regime I iff mc < -mc_barrier (train-error fraction). Our choice: the official code has no "
        "threshold; the notes suggest 0.01-0.05",
    )
    cka_split: Literal["column_median", "column_max", "threshold"] = param(
        "column_median",
        "how connected cells split into II-A (dissimilar) and II-B (similar): CKA below/above the median "
        "of the connected cells of its density column, their maximum (the most similar cell), or "
        "cka_threshold, each less cka_margin. Our choice, not the paper's",
    )
    cka_threshold: float = param(0.95, "CKA threshold when cka_split=threshold (our choice)")
    cka_margin: float = param(
        0.0,
        "minimum CKA difference that counts: a connected cell is II-A only if its CKA is more than this below "
        "the split's reference (0 = any difference, even in the 4th decimal). Also the decision margin of "
        "claim C3 (three_regime/claims.py)",
    )


@dataclass(frozen=True)
class ClaimsConfig:
    """What the claim rules (three_regime/claims.py) need besides the grid: their preconditions."""

    min_dense_accuracy: float = param(
        0.0,
        "dense test accuracy (%, mean over dense seeds) a checkpoint must reach to enter claims C1-C3; "
        "under-trained checkpoints below it are excluded and named in the record (0 = none excluded)",
    )


@dataclass(frozen=True)
class GridConfig:
    """The temperature x density grid; only the list named by `temperature` is used."""

    temperature: Literal["training_epochs", "batch_size", "sam_rho"] = param(
        "training_epochs",
        "the temperature-like knob of the dense model: fewer epochs, smaller batch or larger "
        "rho = hotter (the rho direction is assumed, unverified)",
    )
    training_epochs: tuple[int, ...] = param(
        tuple(range(10, 161, 10)), "dense checkpoints (epochs) taken from one training run (official: 10, 20, ..., 160)"
    )
    batch_sizes: tuple[int, ...] = param(
        (16, 32, 64, 128, 256, 512), "dense batch sizes at a fixed iteration budget (official batch-size study)"
    )
    sam_rhos: tuple[float, ...] = param(
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        "SAM rho values (official README: 0.1 ... 0.8; the 0.1 step is our assumption)",
    )
    densities: tuple[float, ...] = param(
        (5.0, 6.0, 7.0, 8.0, 10.0, 14.0, 20.0, 40.0, 80.0),
        "load-like knob: % of prunable weights kept (official: 5, 6, 7, 8, 10, 14, 20, 40, 80)",
    )


@dataclass(frozen=True)
class ShardConfig:
    """Spreading grid cells over processes and machines; results are cached per cell (see three_regime/cli.py)."""

    index: int = param(
        0,
        "this run computes the cells whose index % count == index (`grid --shard i/n` sets it; e.g. one cluster "
        "array task per shard); under a launcher (NPROC=N) the shard is further dealt over the N processes",
    )
    count: int = param(1, "number of shards the grid is split into (1 = run every cell here)")
    workers: int = param(
        1,
        "worker processes on this machine, one torch thread each (one per core on CPU); under a launcher with N "
        "processes: W jobs at once per GPU, or on the CPU W // N (at least 1) per process",
    )


@dataclass(frozen=True)
class ThreeRegimeConfig:
    seeds: tuple[int, ...] = param(
        (1, 2, 3), "dense-model training seeds; every grid number is averaged over them (official notebook: 1, 2, 3)"
    )
    data: DataConfig = param(DataConfig(), "dataset")
    model: ModelConfig = param(ModelConfig(), "architecture")
    train: TrainConfig = param(TrainConfig(), "dense training (temperature-like knob acts here)")
    prune: PruneConfig = param(PruneConfig(), "one-shot unstructured L1-magnitude pruning")
    retrain: RetrainConfig = param(RetrainConfig(), "retraining with fixed masks")
    metrics: MetricsConfig = param(MetricsConfig(), "LMC and CKA between retrained pairs")
    regime: RegimeConfig = param(RegimeConfig(), "regime thresholds")
    claims: ClaimsConfig = param(ClaimsConfig(), "claim preconditions (three_regime/claims.py)")
    grid: GridConfig = param(GridConfig(), "temperature x density grid")
    shard: ShardConfig = param(ShardConfig(), "parallelism")


def smoke() -> ThreeRegimeConfig:
    """Seconds on a CPU: a 3 x 3 grid with a tiny BN-MLP on MNIST-1D; checks the plumbing, used by the tests.

    Command: ``make reproduce-three_regime PRESET=smoke``. Hardware: any CPU. Time: < 60 s (about 10 s).
    Targets no paper number: the models are barely trained, so its claims' verdicts carry no evidence; it
    writes a record with every output of the full pipeline (Fig. 2 panels, regime map, case studies, claims).
    """
    return ThreeRegimeConfig(
        seeds=(0,),
        data=DataConfig(dataset="mnist1d", num_samples=2000),
        model=ModelConfig(arch="mlp_bn", hidden_layers=2, hidden_width=64),
        train=TrainConfig(epochs=6, batch_size=64, weight_decay=5e-4),
        retrain=RetrainConfig(seeds=(0, 1), epochs=3, batch_size=64, weight_decay=5e-4, test_error_last_epochs=1),
        metrics=MetricsConfig(lmc_points=5, cka_samples=500),
        regime=RegimeConfig(mc_barrier=0.02, cka_split="column_max", cka_margin=0.01),
        grid=GridConfig(training_epochs=(2, 4, 6), densities=(5.0, 20.0, 50.0)),
        shard=ShardConfig(workers=1),
    )


def mini() -> ThreeRegimeConfig:
    """The default of ``make reproduce-three_regime``: a Fig. 2 analogue (BN-MLP, MNIST-1D) sized for the claims.

    Command: ``make reproduce-three_regime``. Hardware: 2-core CPU, two single-thread worker processes.
    Time: the 30-epoch retraining of the previous version took 34.3 min (2,059 s, commit ac43e31, AMD EPYC), over
    the 20-minute budget of issue 17. A step of this 4 x 256 BN-MLP costs ~7 ms per worker (compute-bound: the
    forward pass alone is a third of it; ``foreach`` SGD measured no faster), and 480k of the 540k steps were
    retraining, so retraining is 12 epochs now (decays at epochs 7 and 10, the reported error the mean of the last
    3, all at the final lr): about 250k steps, measured 14.9 min (891 s, commit 4625db3, idle AMD EPYC; every
    timed run since: results/README.md, "Run time against the budgets"); the verdicts are those of the 30-epoch
    run (C1, C3 reproduced; C2 inconclusive; C4-C6 not testable).
    The 30-epoch retraining: ``--set retrain.epochs=30 --set retrain.test_error_last_epochs=5``.
    Targets: Fig. 2 (PreResNet-20 / CIFAR-10, temperature = training epochs) as a qualitative analogue, and
    the claims of three_regime/claims.py. Changes from the earlier 10-minute version (issue 12): 16,000
    training examples instead of 4,000 (at 4x the data the low-density temperature effect in mc widened from
    -0.135 to -0.235, epoch 20 vs 60, and the cold checkpoints' dense test error fell from ~23% to ~7%), 4 dense
    seeds instead of 2 (replication halves of 2 + 2), 2 retraining seeds (one pair) per cell instead of 3, and
    2 x 4 cells instead of 6 x 6 to pay for it: checkpoints 20 (hot: lr 0.1) and 60 (cold: after the decays at
    epochs 30 and 45), two low densities (1, 2%) and two high ones (20, 50%), so every claim compares groups
    of two densities. The 6 x 6 map with 3 retraining seeds (about 75 min here: 1.3M steps at ~7 ms on 2
    workers, estimate):
    ``--set grid.training_epochs='(10,20,30,40,50,60)' --set grid.densities='(1.0,2.0,5.0,10.0,20.0,50.0)'
    --set retrain.seeds='(0,1,2)'``. The schedule is the official 160-epoch one scaled by 3/8 (60 epochs,
    decays at 30/45).
    """
    return ThreeRegimeConfig(
        seeds=(0, 1, 2, 3),
        data=DataConfig(dataset="mnist1d", num_samples=20000, seed=42),
        model=ModelConfig(arch="mlp_bn", hidden_layers=4, hidden_width=256),
        train=TrainConfig(epochs=60, batch_size=64, lr=0.1, weight_decay=5e-4, lr_decay_at=(0.5, 0.75)),
        prune=PruneConfig(scope="uniform", prune_classifier=False),
        retrain=RetrainConfig(
            seeds=(0, 1),
            epochs=12,
            batch_size=64,
            lr=0.1,
            weight_decay=5e-4,
            lr_decay_at=(0.5, 0.75),
            test_error_last_epochs=3,
        ),
        metrics=MetricsConfig(lmc_points=11, lmc_samples=0, cka_features="softmax", cka_samples=1000),
        regime=RegimeConfig(mc_barrier=0.02, cka_split="column_max", cka_margin=0.01),
        claims=ClaimsConfig(min_dense_accuracy=75.0),
        grid=GridConfig(temperature="training_epochs", training_epochs=(20, 60), densities=(1.0, 2.0, 20.0, 50.0)),
        shard=ShardConfig(workers=2),
    )


def paper() -> ThreeRegimeConfig:
    """PreResNet-20 on CIFAR-10 from a local copy, the official 16 x 9 grid (Fig. 2), for GPUs.

    Command: ``make reproduce-three_regime PRESET=paper ARGS="--set data.root=/path/to/cifar10"``, on N GPUs of
    one node with ``NPROC=N`` (the jobs are dealt over the N processes); to spread the cells over machines run
    ``python -m three_regime grid --preset paper --shard i/N --set data.root=...`` for i = 0..N-1 (``--workers
    W`` for W concurrent jobs per GPU), ``python -m three_regime merge <their cache dirs>`` if their caches
    differ, then the command above to write the record from the cached cells (README.md, "How to run").
    Batch-size study: ``--set grid.temperature=batch_size --set train.iterations=62400 --set
    retrain.iterations=62400 --set retrain.batch_size=128``; SAM study: ``--set train.optimizer=sam --set
    grid.temperature=sam_rho``. A reduced run (the notes' "about 1 GPU-hour"): ``--set seeds='(1,)' --set
    retrain.seeds='(1,2)' --set retrain.epochs=80 --set grid.training_epochs='(20,40,60,80,100,160)' --set
    grid.densities='(5.,7.,10.,20.,80.)'``.
    Hardware: one or more CUDA GPUs. Time: 1,296 retrainings of 160 epochs; the notes estimate ~9 GPU-hours
    on an H100 with ~10 concurrent jobs and a GPU-resident data pipeline, ~10x more with CPU data loading
    (estimates, not measured).
    Targets: Fig. 2 (test error, normalized test error, mc, CKA; 16 training-epoch temperatures x 9 densities,
    3 dense seeds x 3 retraining seeds). The figure is numbered as in the official repo; check against the PDF.
    Follows the official code where this package first differed (issue 13): PreResNet's projection shortcut
    reads the raw block input (``model.shortcut_input=input``), the crop pads with black pixels
    (``data.crop_fill=black``), and LMC re-estimates BN on batches of 64 weighted per example
    (``metrics.bn_batch_size=64``, ``metrics.bn_weighting=sample``).
    """
    return ThreeRegimeConfig(
        seeds=(1, 2, 3),
        data=DataConfig(dataset="cifar10", root="", augment=True, crop_fill="black"),
        model=ModelConfig(arch="preresnet", depth=20, width_scale=1, shortcut_input="input"),
        train=TrainConfig(epochs=160, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_decay_at=(0.5, 0.75)),
        prune=PruneConfig(scope="uniform", prune_classifier=False),
        retrain=RetrainConfig(
            seeds=(1, 2, 3),
            epochs=160,
            batch_size=64,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            lr_decay_at=(0.5, 0.75),
            test_error_last_epochs=5,
        ),
        metrics=MetricsConfig(
            lmc_points=11,
            lmc_samples=0,
            bn_batch_size=64,
            bn_weighting="sample",
            cka_features="softmax",
            cka_samples=6464,
        ),
        grid=GridConfig(
            temperature="training_epochs",
            training_epochs=tuple(range(10, 161, 10)),
            densities=(5.0, 6.0, 7.0, 8.0, 10.0, 14.0, 20.0, 40.0, 80.0),
        ),
        shard=ShardConfig(index=0, count=1, workers=1),
    )


PRESETS = {"smoke": smoke, "mini": mini, "paper": paper}
