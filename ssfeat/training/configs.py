"""Training configs: the loop's shared fields (:class:`LoopConfig`) and one config per task; each is
stored in the task's checkpoints (``dataclasses.asdict``) and read back with ``from_dict``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..data.descriptor_pairs import DescriptorPairConfig
from ..data.homography_pairs import HomographyPairConfig
from ..data.synthesis import PairConfig
from ..data.validate import check_fields
from ..data.view_pairs import ViewPairConfig
from ..data.warp_pairs import WarpPairConfig
from ..models.descriptor import DescriptorConfig
from ..models.detector import DetectorConfig
from ..models.patch_pose import PatchPoseConfig
from ..models.scale_pose import ScalePoseConfig
from ..models.warp import WarpConfig


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
class PoseTrainConfig(LoopConfig):
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
    def from_dict(cls, d: dict) -> PoseTrainConfig:
        d = dict(d)
        d["model"] = PatchPoseConfig.from_dict(d.get("model", {}))
        d["pairs"] = PairConfig(**d.get("pairs", {}))
        return cls(**d)


@dataclass
class ScalePoseTrainConfig(LoopConfig):
    """Scale-covariant keypoint pose training (log-polar scale histograms aligned across zoomed,
    turned views); stored in every checkpoint. ``batch_size``/``val_pairs`` count view pairs, each
    with ``pairs.keypoints`` keypoint pairs."""

    batch_size: int = 8
    val_pairs: int = 64
    lr: float = 3e-3
    temperature: float = 1.0  # of the loss softmax (the model already fixes the logit norm)
    # weight of the histograms' mean log2 radius (octaves) in the loss: alignment alone leaves free
    # where on the rings the peak sits, and then the network reads far context (image borders,
    # other objects) that real pairs do not share; this term makes it the smallest consistent scale
    locality: float = 0.0
    # weight of a cross-entropy of each view against the other view's strongest ring, shifted by the
    # zoom (losses.mode_agreement_loss): alignment alone lets two near-equal modes swap between views
    mode_weight: float = 0.0
    model: ScalePoseConfig = field(default_factory=ScalePoseConfig)
    pairs: ViewPairConfig = field(default_factory=ViewPairConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("locality", "mode_weight"), ("temperature",))

    @classmethod
    def from_dict(cls, d: dict) -> ScalePoseTrainConfig:
        d = dict(d)
        d["model"] = ScalePoseConfig.from_dict(d.get("model", {}))
        d["pairs"] = ViewPairConfig(**d.get("pairs", {}))
        return cls(**d)


@dataclass
class DetectorTrainConfig(LoopConfig):
    """Keypoint-detector training (ReKD losses); stored in every checkpoint.

    Loss = ``ori_weight * dense orientation alignment + kp_weight * MSIP`` (see :mod:`ssfeat.training.losses`);
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


__all__ = ["DescriptorTrainConfig", "DetectorTrainConfig", "LoopConfig", "PoseTrainConfig", "WarpTrainConfig"]
