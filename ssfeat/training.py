"""Self-supervised training: patch pose (histogram alignment), the oriented keypoint detector
(ReKD losses) and dense descriptors (HNDesc AP loss), each a *task* run by one training loop.

One function, :func:`fit`, runs single-process or under ``torchrun`` (DDP; gloo on CPU, NCCL on
GPU) through the same code. Every sample is a pure function of its global index, so a run resumed
from its checkpoint reproduces the uninterrupted run exactly.

Why training converges here (the paper's recipe with T=20 and SGD sat at the uniform histogram):
the model's logits are centred and rescaled to a fixed norm (``PatchPoseConfig.logit_norm``), so
the histograms can neither collapse to uniform (where the alignment gradient vanishes) nor blow up;
AdamW with warm-up and cosine decay replaces SGD at lr 3.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import __version__
from . import distributed as du
from .data.descriptor_pairs import DescriptorPairConfig, DescriptorPairSynthesizer
from .data.homography_pairs import HomographyPairConfig, HomographyPairSynthesizer
from .data.images import load_textured
from .data.synthesis import PairConfig, PairSynthesizer, split_by_image
from .data.validate import check_fields
from .data.warp_pairs import WarpPairConfig, WarpPairSynthesizer
from .evaluation.metrics import pose_accuracies
from .losses import (
    ap_loss,
    consistency_loss,
    corner_loss,
    dense_orientation_loss,
    features_wise_loss,
    hard_negatives,
    histogram_alignment_loss,
    msip_loss,
    triplet_loss,
    visibility_masks,
)
from .models.descriptor import DescriptorConfig, DescriptorNet, sample_descriptors
from .models.detector import DetectorConfig, OrientedKeypointNet
from .models.patch_pose import PatchPoseConfig, PatchPoseNet, decode_pose
from .models.warp import WarpConfig, WarpNet, unflip_corners

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass
class LoopConfig:
    """Fields every training task shares."""

    images: str = ""  # folder of training photos (recursive)
    val_images: str | None = None  # image-disjoint validation folder; default: hold out images
    val_fraction: float = 0.05  # share of ``images`` held out (by image) when val_images is None
    steps: int = 3000  # optimisation steps (ignored when time_budget_min is set)
    time_budget_min: float | None = None  # fit the schedule into this many minutes of training
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    val_every: int = 250
    val_pairs: int = 512
    ckpt_every: int = 250
    workers: int = 1  # background processes synthesising batches (0: in the training process)
    init_weights: str | None = None  # start from these weights (fine-tuning; same architecture)
    seed: int = 0
    ema_decay: float = 0.0  # > 0: validate, select and export an exponential moving average of the weights

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "val_pairs", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.workers < 0:
            raise ValueError("warmup_steps and workers must be >= 0")
        t = self.time_budget_min
        if t is not None and t == 0:  # "no budget" in checkpoints written before this check
            self.time_budget_min = None
        elif t is not None and not (math.isfinite(t) and t > 0):
            raise ValueError(f"time_budget_min must be a positive number of minutes, got {t}")


@dataclass
class TrainConfig(LoopConfig):
    """Patch-pose training; stored in every checkpoint. ``batch_size``/``val_pairs`` count pairs of
    each kind (orientation and scale) per step, over all processes."""

    temperature: float = 1.0  # of the loss softmax (the model already fixes the logit norm)
    symmetric: bool = True  # symmetric cross-entropy (paper Eq. 6-7)
    scale_loss: str = "full"  # "full" or "shared" (paper Eq. 4); see losses.histogram_alignment_loss
    scale_full_steps: int = 0  # with scale_loss="shared": use "full" for these first steps (warm start)
    ori_weight: float = 1.0
    scale_weight: float = 1.0
    # distillation: weights of a trained PatchPoseNet (file, run or bundled name) whose scale histograms
    # on the scale pairs' patches the model also learns to match (cross-entropy, this weight); the
    # teacher stays fixed. None: off
    distill: str | None = None
    distill_weight: float = 1.0
    model: PatchPoseConfig = field(default_factory=PatchPoseConfig)
    pairs: PairConfig = field(default_factory=PairConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("distill_weight",))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = PatchPoseConfig.from_dict(d.get("model", {}))
        d["pairs"] = PairConfig(**d.get("pairs", {}))
        return cls(**d)


@dataclass
class DetectorTrainConfig(LoopConfig):
    """Keypoint-detector training (ReKD losses); stored in every checkpoint.

    Loss = ``ori_weight * dense orientation alignment + kp_weight * MSIP`` (see :mod:`ssfeat.losses`);
    the orientation term is a cross-entropy (about ``ln N`` at the start), the MSIP term a mean squared
    offset in window sides (about 0.1 at the start), hence ``kp_weight = 10``."""

    batch_size: int = 8  # image pairs per step, over all processes
    lr: float = 1e-3
    warmup_steps: int = 50
    val_every: int = 100
    val_pairs: int = 32
    ckpt_every: int = 100
    ori_weight: float = 1.0
    kp_weight: float = 10.0
    symmetric: bool = True
    border: int = 8  # pixels of each view's border left out of the losses
    model: DetectorConfig = field(default_factory=DetectorConfig)
    pairs: HomographyPairConfig = field(default_factory=HomographyPairConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("ori_weight", "kp_weight"))

    @classmethod
    def from_dict(cls, d: dict) -> DetectorTrainConfig:
        d = dict(d)
        d["model"] = DetectorConfig.from_dict(d.get("model", {}))
        d["pairs"] = HomographyPairConfig(**d.get("pairs", {}))
        return cls(**d)


@dataclass
class DescriptorTrainConfig(LoopConfig):
    """Dense-descriptor training (HNDesc); stored in every checkpoint.

    ``loss="ap"``: listwise AP (``ap_bins`` bins) of each anchor's positive against its
    ``negatives`` hardest in-batch negatives; ``"triplet"``: hardest-negative triplet with
    ``margin``. Negatives come from the *other* images of the batch (HNDesc), and with
    ``same_image_negatives`` also from the other keypoints of the same pair that lie more than
    ``negative_radius`` px from the true match."""

    batch_size: int = 8  # image pairs per step, over all processes
    lr: float = 1e-3
    warmup_steps: int = 100
    val_every: int = 250
    val_pairs: int = 64
    ckpt_every: int = 250
    loss: str = "ap"  # "ap" or "triplet"
    negatives: int = 20
    ap_bins: int = 20
    margin: float = 1.0
    same_image_negatives: bool = False
    negative_radius: float = 8.0
    model: DescriptorConfig = field(default_factory=DescriptorConfig)
    pairs: DescriptorPairConfig = field(default_factory=DescriptorPairConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("ap", "triplet"):
            raise ValueError(f"loss must be 'ap' or 'triplet', not {self.loss!r}")
        check_fields(self, positive=("negatives",), maxima={"negatives": 1024})

    @classmethod
    def from_dict(cls, d: dict) -> DescriptorTrainConfig:
        d = dict(d)
        d["model"] = DescriptorConfig.from_dict(d.get("model", {}))
        d["pairs"] = DescriptorPairConfig(**d.get("pairs", {}))
        return cls(**d)


@dataclass
class WarpTrainConfig(LoopConfig):
    """Homography-regression training (GeoWarp); stored in every checkpoint. The backbone (the
    descriptor network ``backbone_weights``) is frozen. Loss per step: ``corner_weight`` x the
    corner MSE of self-supervised trapezoid pairs (both input orders); with ``qp_root`` (a
    geolocalization dataset) also ``consistency_weight`` x the consistency loss and
    ``features_weight`` x the features-wise loss on ``qp_batch_size`` weakly supervised
    (query, positive) pairs of its train split every ``qp_every`` steps, mined once at start
    (top-20 retrieval, within 25 m, cosine similarity >= ``qp_min_similarity``)."""

    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    val_every: int = 250
    val_pairs: int = 256
    ckpt_every: int = 250
    corner_weight: float = 1.0
    qp_root: str | None = None
    qp_batch_size: int = 8
    qp_every: int = 4  # the (query, positive) losses on every qp_every-th step (they cost ~3 plain steps)
    qp_min_similarity: float = 0.4
    consistency_weight: float = 0.1
    features_weight: float = 10.0
    backbone_weights: str = "descriptor"
    model: WarpConfig = field(default_factory=WarpConfig)
    pairs: WarpPairConfig = field(default_factory=WarpPairConfig)

    @classmethod
    def from_dict(cls, d: dict) -> WarpTrainConfig:
        d = dict(d)
        d["model"] = WarpConfig.from_dict(d.get("model", {}))
        d["pairs"] = WarpPairConfig(**d.get("pairs", {}))
        return cls(**d)


CONFIGS = {
    "pose": TrainConfig,
    "detector": DetectorTrainConfig,
    "descriptor": DescriptorTrainConfig,
    "warp": WarpTrainConfig,
}


def _task_name(cfg: LoopConfig) -> str:
    """The checkpoint ``task`` name of a config (``CONFIGS`` key)."""
    return next((k for k, v in CONFIGS.items() if isinstance(cfg, v)), type(cfg).__name__)


def config_from_checkpoint(ckpt: dict) -> LoopConfig:
    """The typed training config stored in a checkpoint (``task`` "pose", the default, "detector"
    or "descriptor")."""
    task = ckpt.get("task", "pose")
    if task not in CONFIGS:
        raise ValueError(f"unknown training task {task!r} in the checkpoint")
    try:
        return CONFIGS[task].from_dict(ckpt["config"])
    except ValueError as e:  # a stored value this version refuses
        raise ValueError(f"the checkpoint's {task} config is not valid for this ssfeat version: {e}") from e


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash mid-write
    leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Load a training checkpoint (CPU tensors) and check its version.

    Raises:
        ValueError: not an ssfeat checkpoint or written by an incompatible version.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own messages run over many lines and suggest weights_only=False,
        # which is unsafe for files from elsewhere: name the failure instead
        raise ValueError(
            f"{path}: not an ssfeat checkpoint (truncated, or not a PyTorch file: {type(e).__name__})"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not an ssfeat checkpoint")
    if ckpt.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {ckpt.get('checkpoint_version')} is not supported "
            f"(this ssfeat reads version {CHECKPOINT_VERSION})"
        )
    return ckpt


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 2% of ``cfg.lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def ema_decay_at(step: int, decay: float) -> float:
    """Decay of the weight average after optimisation step ``step`` (0-based): ``decay``, ramped
    up as ``(1 + step) / (10 + step)`` early on so the average forgets the random initialisation."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` over every floating-point parameter and buffer
    (batch-norm statistics included); integer buffers are copied."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


def pair_loss(
    model, batch: dict, cfg: TrainConfig, step: int = 0, teacher: PatchPoseNet | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Alignment loss of an orientation batch and a scale batch (dict of ``(B, ...)`` tensors), plus,
    with a ``teacher``, ``cfg.distill_weight`` times the cross-entropy from the teacher's scale
    histograms to the model's on the ``2B`` patches of the scale pairs."""
    mcfg: PatchPoseConfig = cfg.model
    ori_b, sca_b = batch["ori"], batch["scale"]
    B = ori_b["patch0"].shape[0]
    x = torch.cat([ori_b["patch0"], ori_b["patch1"], sca_b["patch0"], sca_b["patch1"]])
    ori_logits, sca_logits = model(x)
    lo = histogram_alignment_loss(
        ori_logits[:B],
        ori_logits[B : 2 * B],
        ori_b["rotation"] / mcfg.ori_bin_width,
        circular=True,
        temperature=cfg.temperature,
        symmetric=cfg.symmetric,
    )
    ls = histogram_alignment_loss(
        sca_logits[2 * B : 3 * B],
        sca_logits[3 * B :],
        sca_b["log2_scale"] / mcfg.scale_bin_width,
        circular=False,
        temperature=cfg.temperature,
        symmetric=cfg.symmetric,
        scale_mode="full" if step < cfg.scale_full_steps else cfg.scale_loss,
    )
    loss = cfg.ori_weight * lo + cfg.scale_weight * ls
    parts = {"loss_ori": lo.item(), "loss_scale": ls.item()}
    if teacher is not None:
        with torch.no_grad():
            target = F.softmax(teacher.scale_logits(x[2 * B :]), -1)
        ld = -(target * F.log_softmax(sca_logits[2 * B :], -1)).sum(-1).mean()
        loss = loss + cfg.distill_weight * ld
        parts["loss_distill"] = ld.item()
    return loss, parts


@torch.no_grad()
def evaluate_pairs(model, batches: dict, config: PatchPoseConfig, chunk: int = 512) -> dict[str, float]:
    """Accuracies of ``model`` on pre-made orientation and scale pair batches."""
    was_training = model.training
    model.eval()

    def run(x):
        outs = [model(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        return decode_pose(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), config)

    o, s = batches["ori"], batches["scale"]
    o0, o1 = run(o["patch0"]), run(o["patch1"])
    s0, s1 = run(s["patch0"]), run(s["patch1"])
    model.train(was_training)
    return pose_accuracies(
        o0["orientation"][:, 0],
        o1["orientation"][:, 0],
        o["rotation"],
        s0["log2_scale"][:, 0],
        s1["log2_scale"][:, 0],
        s["log2_scale"],
    )


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (_to(v, device) if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


class _StepBatches(torch.utils.data.Dataset):
    """Item ``s`` = this process's training batch of step ``s`` (deterministic)."""

    def __init__(self, task, synth, cfg: LoopConfig, start: int, total: int, rank: int, world: int):
        self.task, self.synth, self.start, self.total = task, synth, start, total
        self.B, self.b, self.rank = cfg.batch_size, cfg.batch_size // world, rank

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, i: int) -> dict:
        base = (self.start + i) * self.B + self.rank * self.b
        return self.task.make_batch(self.synth, range(base, base + self.b))


def _split_images(cfg: LoopConfig, min_size: int = 0) -> tuple[list, list, list, list]:
    """Training and validation ``(paths, images)``, split by image (or from ``val_images``).

    Images smaller than ``min_size`` px a side (what the task needs: the pose training margins, the
    detector's views, half the descriptor's or warp's views, below which views would be upsampled
    more than 2x) and blank ones are dropped, with a warning naming them, *before* the split, so
    that neither side is left with unusable images. A folder with a single usable image (and no
    ``val_images``) validates on its training image, with a warning that the validation scores are
    then not held out."""
    paths, images = load_textured(cfg.images, min_size=min_size)
    if cfg.val_images:
        vpaths, vimages = load_textured(cfg.val_images, min_size=min_size)
        return paths, images, vpaths, vimages
    train_idx, val_idx = split_by_image(paths, cfg.val_fraction, Path(cfg.images))
    if not val_idx or not train_idx:  # tiny folders: hold out the last image
        train_idx, val_idx = list(range(max(1, len(images) - 1))), [len(images) - 1]
    if set(train_idx) & set(val_idx):
        logger.warning(
            "only one usable image under %s: validation uses the training image (scores are not held out; "
            "give more images or --val-images)",
            cfg.images,
        )
    return (
        [paths[i] for i in train_idx],
        [images[i] for i in train_idx],
        [paths[i] for i in val_idx],
        [images[i] for i in val_idx],
    )


def make_synthesizers(cfg: TrainConfig) -> tuple[PairSynthesizer, PairSynthesizer]:
    """Patch-pose training and validation synthesisers, split by image."""
    paths, images, vpaths, vimages = _split_images(cfg, min_size=2 * cfg.pairs.margin() + 1)
    train = PairSynthesizer(images, cfg.pairs, [str(p) for p in paths])
    vcfg = dataclasses.replace(cfg.pairs, photometric=False, ref_random_pose=False, seed=cfg.pairs.seed + 1)
    val = PairSynthesizer(vimages, vcfg, [str(p) for p in vpaths])
    return train, val


def _init_state(load, path: str, arch) -> dict:
    """Weights of ``load(path)`` (a hub loader) for fine-tuning; the architecture must be ``arch``."""
    init = load(path)
    if init.config != arch:
        raise ValueError(f"--init {path} has architecture {init.config}, not {arch}")
    return init.state_dict()


def _load_teacher(cfg: TrainConfig) -> PatchPoseNet:
    """The fixed distillation teacher ``cfg.distill`` (evaluation mode, no gradients).

    Raises:
        ValueError: missing or foreign weights, or a teacher whose patch size or scale histogram
            differs from ``cfg.model``'s.
    """
    from .hub import load_model

    try:
        t = load_model(cfg.distill)
    except ValueError as e:
        raise ValueError(f"the --distill teacher: {e}") from e
    m = cfg.model
    if t.config.patch_size != m.patch_size:
        raise ValueError(
            f"--distill {cfg.distill}: it reads {t.config.patch_size}-pixel patches, "
            f"the model {m.patch_size}-pixel ones"
        )
    if (t.config.n_scale_bins, t.config.scale_range) != (m.n_scale_bins, m.scale_range):
        raise ValueError(
            f"--distill {cfg.distill}: its scale histogram ({t.config.n_scale_bins} bins over "
            f"[-{t.config.scale_range:g}, {t.config.scale_range:g}]) differs from the model's "
            f"({m.n_scale_bins} over [-{m.scale_range:g}, {m.scale_range:g}])"
        )
    return t.eval().requires_grad_(False)


class PoseTask:
    """Patch pose by histogram alignment (orientation and scale pair batches)."""

    name = "pose"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.teacher = _load_teacher(cfg) if cfg.distill is not None else None

    def __getstate__(self) -> dict:
        # batch-synthesis workers receive the task (for make_batch) and never use the teacher: under
        # the spawn start method it would otherwise be pickled into each of them
        return {**self.__dict__, "teacher": None}

    def build_model(self) -> PatchPoseNet:
        return PatchPoseNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        from .hub import load_model

        def load(p: str) -> PatchPoseNet:
            model = load_model(p)
            model.set_c4_below(self.cfg.model.c4_below)  # exported weights' threshold: inference, not architecture
            return model

        return _init_state(load, path, self.cfg.model)

    def synthesizers(self):
        return make_synthesizers(self.cfg)

    def make_batch(self, synth: PairSynthesizer, indices) -> dict:
        return {k: synth.batch(k, indices) for k in ("ori", "scale")}

    def val_batch(self, synth: PairSynthesizer) -> dict:
        return self.make_batch(synth, range(self.cfg.val_pairs))

    def loss(self, net, batch: dict, step: int):
        if self.teacher is not None:
            self.teacher.to(batch["scale"]["patch0"].device)  # a no-op after the first step
        return pair_loss(net, batch, self.cfg, step, self.teacher)

    def evaluate(self, model, val: dict) -> dict[str, float]:
        return evaluate_pairs(model, val, self.cfg.model)

    @staticmethod
    def score(m: dict[str, float]) -> float:
        return m["ori_acc@10deg"] + m["scale_acc@0.333"]

    postfix = {"ori10": "ori_acc@10deg", "sca13": "scale_acc@0.333"}


class DetectorTask:
    """Oriented keypoint detector: dense orientation alignment + MSIP on synthetic view pairs."""

    name = "detector"

    def __init__(self, cfg: DetectorTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> OrientedKeypointNet:
        return OrientedKeypointNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        from .hub import load_detector

        return _init_state(load_detector, path, self.cfg.model)

    def synthesizers(self):
        _, images, _, vimages = _split_images(self.cfg, min_size=self.cfg.pairs.size)
        vcfg = dataclasses.replace(self.cfg.pairs, photometric=False, seed=self.cfg.pairs.seed + 1)
        return HomographyPairSynthesizer(images, self.cfg.pairs), HomographyPairSynthesizer(vimages, vcfg)

    def make_batch(self, synth: HomographyPairSynthesizer, indices) -> dict:
        return synth.batch(indices)

    def val_batch(self, synth: HomographyPairSynthesizer) -> dict:
        return synth.batch(range(self.cfg.val_pairs))

    def loss(self, net, batch: dict, step: int):
        cfg = self.cfg
        B = batch["image0"].shape[0]
        score, ori = net(torch.cat([batch["image0"], batch["image1"]]))
        m0, m1 = visibility_masks(batch["H_0to1"], batch["valid0"], batch["valid1"], cfg.border)
        lo = dense_orientation_loss(ori[:B], ori[B:], batch["H_0to1"], batch["rotation"], m0, cfg.symmetric)
        lk = msip_loss(score[:B], score[B:], batch["H_0to1"], m0, m1)
        return cfg.ori_weight * lo + cfg.kp_weight * lk, {"loss_ori": lo.item(), "loss_kp": lk.item()}

    @torch.no_grad()
    def evaluate(self, model, val: dict) -> dict[str, float]:
        from .evaluation.detector import pair_metrics

        was = model.training
        model.eval()
        out = pair_metrics(model, val, border=self.cfg.border)
        model.train(was)
        return out

    @staticmethod
    def score(m: dict[str, float]) -> float:
        return m["rep@3px"] + m["ori_acc@10deg"]

    postfix = {"rep": "rep@3px", "ori10": "ori_acc@10deg"}


def descriptor_pair_terms(net, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Descriptors of a descriptor-pair batch at its valid keypoints.

    Returns:
        ``d0``, ``d1`` ``(N, D)`` unit descriptors of the N valid correspondences (view 0 at
        ``kp0``, view 1 at ``kp1``), ``group`` ``(N,)`` their pair index, ``kp1`` ``(N, 2)``.
    """
    B = batch["image0"].shape[0]
    size = tuple(batch["image0"].shape[-2:])
    dense = net(torch.cat([batch["image0"], batch["image1"]]))
    d0 = sample_descriptors(dense[:B], batch["kp0"], size)
    d1 = sample_descriptors(dense[B:], batch["kp1"], size)
    m = batch["kp_valid"]
    group = torch.arange(B, device=m.device)[:, None].expand_as(m)
    return d0[m], d1[m], group[m], batch["kp1"][m]


class DescriptorTask:
    """Dense descriptors: AP (or triplet) loss with in-batch hardest negatives on perspective pairs."""

    name = "descriptor"

    def __init__(self, cfg: DescriptorTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> DescriptorNet:
        return DescriptorNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        from .hub import load_descriptor

        return _init_state(load_descriptor, path, self.cfg.model)

    def synthesizers(self):
        _, images, _, vimages = _split_images(self.cfg, min_size=self.cfg.pairs.size // 2)
        vcfg = dataclasses.replace(self.cfg.pairs, seed=self.cfg.pairs.seed + 1)
        return DescriptorPairSynthesizer(images, self.cfg.pairs), DescriptorPairSynthesizer(vimages, vcfg)

    def make_batch(self, synth: DescriptorPairSynthesizer, indices) -> dict:
        return synth.batch(indices)

    def val_batch(self, synth: DescriptorPairSynthesizer) -> dict:
        return synth.batch(range(self.cfg.val_pairs))

    def loss(self, net, batch: dict, step: int):
        cfg = self.cfg
        d0, d1, group, kp1 = descriptor_pair_terms(net, batch)
        # under DDP the negatives come from every process's positives (the whole global batch)
        group = group + du.rank() * batch["image0"].shape[0]
        d1_all, offset = du.gather_rows(d1)
        group_all, _ = du.gather_rows(group)
        far = None
        if cfg.same_image_negatives:
            far = torch.cdist(kp1, du.gather_rows(kp1)[0]) > cfg.negative_radius
        if len(d0) == 0 or len(d1_all) < 2:  # nothing to learn from (every process still steps)
            return sum(p.sum() for p in net.parameters()) * 0.0, {"loss_desc": 0.0}
        s_pos, s_neg = hard_negatives(d0, d1_all, group_all, cfg.negatives, True, far, offset)
        if cfg.loss == "ap":
            loss = ap_loss(s_pos, s_neg, cfg.ap_bins)
        else:
            loss = triplet_loss(s_pos, s_neg, cfg.margin)
        return loss, {"loss_desc": loss.item()}

    @torch.no_grad()
    def evaluate(self, model, val: dict) -> dict[str, float]:
        """``match_acc``: share (%) of view-0 keypoints whose nearest view-1 descriptor in the same
        pair is the true match; ``ap``: mean AP (%) against the hardest in-batch negatives."""
        was = model.training
        model.eval()
        hits, total, aps = 0, 0, []
        for i in range(0, val["image0"].shape[0], 16):
            part = {k: v[i : i + 16] for k, v in val.items()}
            d0, d1, group, kp1 = descriptor_pair_terms(model, part)
            if len(d0) < 2:
                continue
            S = d0 @ d1.T
            S = S.masked_fill(group[:, None] != group[None, :], float("-inf"))
            hits += int((S.argmax(1) == torch.arange(len(d0))).sum())
            total += len(d0)
            s_pos, s_neg = hard_negatives(d0, d1, group, self.cfg.negatives)
            aps.append(1.0 - ap_loss(s_pos, s_neg, self.cfg.ap_bins).item())
        model.train(was)
        return {"match_acc": 100.0 * hits / max(total, 1), "ap": 100.0 * float(sum(aps) / max(len(aps), 1))}

    @staticmethod
    def score(m: dict[str, float]) -> float:
        return m["match_acc"]

    postfix = {"acc": "match_acc", "ap": "ap"}


def corner_metrics(pred_a: torch.Tensor, pred_b: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor) -> dict:
    """``corner_err``: mean distance (normalised units) of the 8 predicted corners to the truth;
    ``within_0.1``: share (%) of pairs whose 8 corners all lie within 0.1 of the truth;
    ``mean_within_0.1``: share (%) of pairs whose mean corner distance is at most 0.1."""
    d = torch.cat([(pred_a - t_a).norm(dim=-1), (pred_b - t_b).norm(dim=-1)], 1)  # (B, 8)
    return {
        "corner_err": float(d.mean()),
        "within_0.1": 100.0 * float((d.amax(1) <= 0.1).float().mean()),
        "mean_within_0.1": 100.0 * float((d.mean(1) <= 0.1).float().mean()),
    }


class WarpTask:
    """Homography regression (GeoWarp): see :class:`WarpTrainConfig` for the losses."""

    name = "warp"

    def __init__(self, cfg: WarpTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> WarpNet:
        from .hub import load_descriptor

        net = WarpNet(self.cfg.model)
        backbone = load_descriptor(self.cfg.backbone_weights)
        if backbone.config != self.cfg.model.backbone:
            raise ValueError(
                f"backbone {self.cfg.backbone_weights} is {backbone.config}, not {self.cfg.model.backbone}"
            )
        net.backbone.load_state_dict(backbone.state_dict())
        return net

    def init_state(self, path: str) -> dict:
        from .hub import load_warp

        return _init_state(load_warp, path, self.cfg.model)

    def synthesizers(self):
        cfg = self.cfg
        _, images, _, vimages = _split_images(cfg, min_size=cfg.pairs.size // 2)
        vcfg = dataclasses.replace(cfg.pairs, seed=cfg.pairs.seed + 1)
        qp = None
        if cfg.qp_root:
            from .hub import load_descriptor
            from .retrieval import load_resized, mine_query_positives

            pairs = mine_query_positives(
                cfg.qp_root, "train", load_descriptor(cfg.backbone_weights), min_similarity=cfg.qp_min_similarity
            )
            if not pairs:
                raise ValueError(f"{cfg.qp_root}: no (query, positive) pair passes the mining thresholds")
            logger.info("%d weakly supervised (query, positive) pairs from %s", len(pairs), cfg.qp_root)
            S = cfg.model.size
            qp = torch.stack([torch.stack([load_resized(q, S), load_resized(p, S)]) for q, p in pairs])
        return (WarpPairSynthesizer(images, cfg.pairs), qp), WarpPairSynthesizer(vimages, vcfg)

    def make_batch(self, synth, indices) -> dict:
        pairs, qp = synth
        batch = pairs.batch(indices)
        if qp is not None:  # (query, positive) pairs drawn by the batch's first index (reproducible)
            n = max(1, len(indices) * self.cfg.qp_batch_size // self.cfg.batch_size)
            pick = np.random.default_rng([self.cfg.seed, 29, int(indices[0])]).integers(len(qp), size=n)
            batch["qp_q"], batch["qp_p"] = qp[pick, 0], qp[pick, 1]
        return batch

    def val_batch(self, synth: WarpPairSynthesizer) -> dict:
        return synth.batch(range(self.cfg.val_pairs))

    def loss(self, net, batch: dict, step: int):
        """One forward pass (both input orders) over the trapezoid pairs and, with ``qp_root``,
        the (query, positive) pairs and their horizontal flips."""
        cfg = self.cfg
        a, b = batch["image_a"], batch["image_b"]
        B = len(a)
        first_in, second_in = [a], [b]
        use_qp = "qp_q" in batch and step % cfg.qp_every == 0
        if use_qp:
            q, p = batch["qp_q"], batch["qp_p"]
            first_in += [q, q.flip(-1)]
            second_in += [p, p.flip(-1)]
        first, second = net(torch.cat(first_in), torch.cat(second_in), both_orders=True)
        N = len(first) // 2  # rows N.. hold the swapped pairs
        lc = 0.5 * (
            corner_loss((first[:B], second[:B]), batch["t_a"], batch["t_b"])
            + corner_loss((first[N : N + B], second[N : N + B]), batch["t_b"], batch["t_a"])
        )
        loss, parts = cfg.corner_weight * lc, {"loss_corner": lc.item()}
        if use_qp:
            n = len(q)
            s1, s3 = slice(B, B + n), slice(B + n, B + 2 * n)  # q -> p, flipped q -> flipped p
            s2, s4 = slice(N + B, N + B + n), slice(N + B + n, N + B + 2 * n)  # and swapped
            preds = [  # all as (query quad, positive quad) in the unflipped frame
                (first[s1], second[s1]),
                (second[s2], first[s2]),
                (unflip_corners(first[s3]), unflip_corners(second[s3])),
                (unflip_corners(second[s4]), unflip_corners(first[s4])),
            ]
            lcons = consistency_loss(preds)
            m = net.module if hasattr(net, "module") else net
            quad_q, quad_p = 0.5 * (first[s1] + second[s2]), 0.5 * (second[s1] + first[s2])
            lfw = features_wise_loss(m.features, m.resize(q), m.resize(p), quad_q, quad_p)
            loss = loss + cfg.consistency_weight * lcons + cfg.features_weight * lfw
            parts.update(loss_consistency=lcons.item(), loss_features=lfw.item())
        return loss, parts

    @torch.no_grad()
    def evaluate(self, model, val: dict) -> dict[str, float]:
        was = model.training
        model.eval()
        n = len(val["t_a"])
        preds = [model.shared_region(val["image_a"][i : i + 64], val["image_b"][i : i + 64]) for i in range(0, n, 64)]
        model.train(was)
        pa, pb = torch.cat([p[0] for p in preds]), torch.cat([p[1] for p in preds])
        return corner_metrics(pa, pb, val["t_a"], val["t_b"])

    @staticmethod
    def score(m: dict[str, float]) -> float:
        return m["within_0.1"] - m["corner_err"]

    postfix = {"w01": "within_0.1", "err": "corner_err"}


TASKS = {"pose": PoseTask, "detector": DetectorTask, "descriptor": DescriptorTask, "warp": WarpTask}


def task_for(cfg: LoopConfig):
    for name, cls in CONFIGS.items():
        if type(cfg) is cls:
            return TASKS[name](cfg)
    raise TypeError(f"no training task for {type(cfg).__name__}")


def fit(
    cfg: LoopConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    total_steps: int | None = None,
) -> Path:
    """Train (or resume) a PatchPoseNet (``TrainConfig``), an OrientedKeypointNet
    (``DetectorTrainConfig``) or a DescriptorNet (``DescriptorTrainConfig``); returns the path of
    the final checkpoint ``last.pt``.

    With ``resume``, the run continues from ``out_dir/last.pt`` with the configuration and schedule
    stored there (``cfg`` is ignored); ``total_steps`` changes the run's length. Under ``torchrun``
    each of the ``W`` processes draws ``batch_size / W`` pairs per step.
    """
    out_dir = Path(out_dir)
    device = du.init_from_env()
    world, rank = du.world_size(), du.rank()
    last = out_dir / "last.pt"
    ckpt = None
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        stored = config_from_checkpoint(ckpt)
        if type(stored) is not type(cfg):
            raise ValueError(
                f"{last} is a {ckpt.get('task', 'pose')} run, not a {_task_name(cfg)} run: "
                "resume it with its own train command"
            )
        cfg = stored
        if total_steps is not None and total_steps < ckpt["step"]:
            raise ValueError(f"{last} is already at step {ckpt['step']}; the resumed run cannot be shorter")
    elif resume:
        logger.warning("no checkpoint at %s: starting a new run", last)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    task = task_for(cfg)  # loads a --distill teacher: a bad one fails before anything is written
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device)
    if cfg.init_weights and ckpt is None:
        model.load_state_dict(task.init_state(cfg.init_weights))
    if du.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None and (last.exists() or (out_dir / "log.jsonl").exists()):
            logger.warning("%s holds an earlier run: starting a new one replaces its checkpoints and log", out_dir)
            (out_dir / "log.jsonl").unlink(missing_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, total, best, history = 0, cfg.steps, -1.0, []
    # the weight average (if any) is what validation scores, best.pt selects and export reads
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, best, history = ckpt["step"], ckpt["best_score"], ckpt["history"]
        total = total_steps or ckpt["total_steps"]
        logger.info("resumed %s at step %d / %d", last, step, total)
    train_synth, val_synth = task.synthesizers()
    val_batches = _to(task.val_batch(val_synth), device)
    net = DistributedDataParallel(model) if world > 1 else model
    # the time budget applies to a fresh run; a resumed run keeps the schedule fitted then
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min and ckpt is None else None
    t0, calibrated, refit_at = time.time(), ckpt is not None or budget_s is None, -1

    def save(path: Path) -> None:
        if du.is_main():
            save_atomic(
                {
                    "checkpoint_version": CHECKPOINT_VERSION,
                    "task": task.name,
                    "ssfeat_version": __version__,
                    "config": dataclasses.asdict(cfg),
                    "model": model.state_dict(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "total_steps": total,
                    "best_score": best,
                    "history": history,
                },
                path,
            )

    bar = None
    if progress and du.is_main():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train {task.name}", dynamic_ncols=True)
    net.train()
    metrics: dict[str, float] = {}
    # upper bound for the loader; a time budget fixes ``total`` after 40 steps
    horizon = total if calibrated else 10**7
    loader = iter(
        torch.utils.data.DataLoader(
            _StepBatches(task, train_synth, cfg, step, horizon, rank, world),
            batch_size=None,
            num_workers=cfg.workers,
            prefetch_factor=4 if cfg.workers else None,
            persistent_workers=False,
        )
    )
    while step < total:
        lr = lr_at(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = _to(next(loader), device)
        loss, parts = task.loss(net, batch, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}: {parts}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            raise FloatingPointError(f"non-finite gradient at step {step} (loss {parts}); weights left unchanged")
        opt.step()
        if ema is not None:
            ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
        step += 1
        loss_val = du.all_reduce_mean(loss.detach()).item()
        if not calibrated and step == 10:
            t_fit, s_fit = time.time(), step
        # fit the schedule to the time budget: at step 40 from the steps since step 10 (past the
        # loader's warm-up), then once more at a quarter of the run (at least step 80) from the steps
        # since step 40 (the first fit alone once used 24 of 50 minutes); a run resumed before the
        # refit keeps the step-40 schedule
        if not calibrated and step in (40, refit_at):
            now = time.time()
            per_step = (now - t_fit) / (step - s_fit)
            total = max(step + 1, int((budget_s - (now - t0)) * 0.95 / per_step) + step)
            total = du.broadcast_int(total)  # every process follows rank 0's schedule
            refit_at, t_fit, s_fit = max(2 * step, total // 4), now, step
            calibrated = step != 40 or refit_at >= total  # no refit for runs shorter than 80 steps
            if bar is not None:
                bar.total = total
            logger.info("time budget %.1f min: %d steps at %.3f s/step", cfg.time_budget_min, total, per_step)
        if step % cfg.val_every == 0 or step == total:
            metrics = task.evaluate(ema if ema is not None else model, val_batches)
            score = task.score(metrics)
            history.append({"step": step, "loss": loss_val, "lr": lr, **metrics})
            if du.is_main():
                with open(out_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(history[-1]) + "\n")
            if score > best:
                best = score
                save(out_dir / "best.pt")
        if step % cfg.ckpt_every == 0 or step == total:
            save(last)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_val:.3f}", **{k: f"{metrics.get(m, float('nan')):.1f}" for k, m in task.postfix.items()}
            )
        if budget_s is not None and du.any_true(time.time() - t0 > budget_s * 1.05 and step < total):
            logger.warning("time budget exceeded at step %d / %d: checkpoint saved, resume with --resume", step, total)
            save(last)
            break
    if bar is not None:
        bar.close()
    du.barrier()
    du.cleanup()
    return last
