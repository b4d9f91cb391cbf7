"""The training recipes of each tier, and the nets that several studies share (so that two studies
name one net the same way and train it once)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from models.train import TrainConfig
from studies.common import StudyArgs


# The training settings of each mode. Full is He et al.'s CIFAR recipe (TrainConfig's defaults);
# quick is an MNIST subset sized for ~1 minute per ResNet-20 on 2 shared CPU cores; smoke is
# seconds on 8x8 synthetic images. Studies override single fields (epochs, samples) as needed.
# Quick uses lr 0.02: in its ~80 steps at lr 0.1, ResNet-44/56 diverge from the first steps and
# stay at chance (measured: train loss 5-7 in epoch 1); He et al.'s warm-up (lr/10 until a batch
# is below 80% error) does not save them, as the jump back to 0.1 comes too early.
# Cpu is the first 20,000 MNIST training images (all 10,000 test images), lr 0.1 with He et al.'s
# warm-up (lr/10 until the training error is below 80%: in a pilot, ResNet-56 at lr 0.1 from the first
# step sat at chance for 100+ steps), 6 epochs (942 steps; lr /10 at 50% and 75%), and the eval-mode
# error on the first 5,000 of those training images after every epoch, which is what the tier's
# "training error" means (binomial SE 0.1 points at 0.5%). Why 20,000 and not 60,000: on 2 cores ResNet-56 trains at ~170 images/s,
# so a 56-layer net to convergence on all 60k (8 epochs, measured in a pilot: 0.30% training error
# after epoch 6) costs ~50 min, and He Fig. 6 alone needs four of them (an epoch of 20k
# images plus the two 5k/10k evaluations is ~6 min for ResNet-56 with one core); 4 epochs of all 60k left
# ResNet-56 at 0.85% training error, above ResNet-20 (0.36%), i.e. unconverged. The claims this tier
# tests are about optimization (training error), which a smaller training set reaches in fewer steps.
TRAINING_MODES: dict[str, dict[str, Any]] = {
    "full": dict(dataset="cifar10", save_every=10),
    "cpu": dict(dataset="mnist", samples=20_000, test_samples=None, epochs=6, lr=0.1, warmup=True,
                train_eval_samples=5_000),
    "quick": dict(dataset="mnist", samples=2500, test_samples=1000, epochs=4, lr=0.02),
    "smoke": dict(dataset="synthetic", data_kwargs={"image_size": 8, "size": 96}, epochs=1, batch_size=32),
}


def training_recipe(args: StudyArgs, **overrides: Any) -> Any:
    """A models.train.TrainConfig template for ``args.mode`` (set ``model``/``noshort`` per net
    with ``dataclasses.replace``); seed, device and data root come from the command line."""
    fields = {**TRAINING_MODES[args.mode], **overrides}
    return TrainConfig(model=fields.pop("model", "resnet20"), seed=args.seed, device=args.device,
                       data_root=args.data_root, download=args.download, progress=args.mode != "smoke",
                       **fields)


# The nets of Li et al. Fig. 5-6 (ResNet-<depth> and its noshort twin); full mode is their CIFAR recipe:
# 300 epochs, SGD, batch 128, lr 0.1, weight decay 5e-4, lr /10 at epochs 150, 225 and 275.
LANDSCAPE_TRAINING = {"full": dict(epochs=300, weight_decay=5e-4, milestones=(0.5, 0.75, 275 / 300)), "cpu": {}, "quick": {}, "smoke": {}}


def landscape_net(args: Any, depth: int, residual: bool) -> Any:
    """The TrainConfig of ResNet-<depth> (or its noshort twin) in this mode; shared by resnet_vs_noshort_landscape and hessian_ratio
    so that both studies look at the same trained nets."""
    return replace(training_recipe(args, **LANDSCAPE_TRAINING[args.mode]), model=f"resnet{depth}", noshort=not residual)


def landscape_label(depth: int, residual: bool) -> str:
    return f"ResNet-{depth}" + ("" if residual else "-noshort")


@dataclass(frozen=True)
class BatchSizeSettings:
    """The batch-size runs of Li et al. Fig. 2-3, shared by batch_size_flatness and trajectory."""

    model: str
    small: int                  # batch sizes
    large: int
    weight_decays: tuple[float, ...]
    training: dict[str, Any]    # TrainConfig overrides
    samples: int | None         # images per point (train and test split)
    random_axis: str            # filter-normalized 1-D slice
    interp_axis: str            # interpolation, 0 = small batch, 1 = large batch


BATCH_SIZE_MODES = {
    # The paper: VGG-9, CIFAR-10, 300 epochs, lr 0.1 (/10 at epochs 150, 225, 275), batch 128 vs 8192.
    "full": BatchSizeSettings("vgg9", 128, 8192, (0.0, 5e-4), dict(epochs=300, lr=0.1, milestones=(0.5, 0.75, 275 / 300)),
                     None, "-1:1:51", "-0.5:1.5:401"),
    # 2 CPU cores: ResNet-8 (VGG-9 trains ~4x slower), 2048 MNIST images, 30 epochs at the paper's
    # lr 0.1 (~90 s per run); batch 64 vs 512 (960 vs 120 steps). Weight decay 5e-3: in ~120x fewer
    # steps than the paper's, 5e-4 would shrink the small-batch weights by ~2% and the large-batch
    # ones by 0.3%; ten times that lets its effect show.
    "quick": BatchSizeSettings("resnet8", 64, 512, (0.0, 5e-3), dict(samples=2048, test_samples=1000, epochs=30, lr=0.1),
                      512, "-1:1:21", "-0.5:1.5:41"),
    # The cpu tier: ResNet-8 on the first 10,000 MNIST training images (all 10,000 test images), 40 epochs
    # at lr 0.1, batch 128 vs 2048 (3,120 vs 200 steps), the paper's weight decays; slices over 2,000
    # images of each split, 3 direction seeds. Defined but not yet run (about 30 min on 2 cores).
    "cpu": BatchSizeSettings("resnet8", 128, 2048, (0.0, 5e-4),
                             dict(samples=10_000, epochs=40, lr=0.1), 2000,
                             "-1:1:51", "-0.5:1.5:41"),
    "smoke": BatchSizeSettings("resnet8", 16, 96, (0.0, 5e-4), dict(epochs=3), 32, "-1:1:5", "-0.5:1.5:5"),
}
