"""The patch-pose task: histogram alignment of orientation and scale pairs (optionally with a
distillation teacher)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ...data.synthesis import PairSynthesizer
from ...evaluation.metrics import pose_accuracies
from ...models.patch_pose import PatchPoseConfig, PatchPoseNet, decode_pose
from ...models.weights import load_pose_model
from ..configs import PoseTrainConfig
from ..inputs import init_state_from, split_images
from ..losses import histogram_alignment_loss


def pair_loss(
    model, batch: dict, cfg: PoseTrainConfig, step: int = 0, teacher: PatchPoseNet | None = None
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


def make_synthesizers(cfg: PoseTrainConfig) -> tuple[PairSynthesizer, PairSynthesizer]:
    """Patch-pose training and validation synthesisers, split by image."""
    paths, images, vpaths, vimages = split_images(cfg, min_size=2 * cfg.pairs.margin() + 1)
    train = PairSynthesizer(images, cfg.pairs, [str(p) for p in paths])
    vcfg = dataclasses.replace(cfg.pairs, photometric=False, ref_random_pose=False, seed=cfg.pairs.seed + 1)
    val = PairSynthesizer(vimages, vcfg, [str(p) for p in vpaths])
    return train, val


def _load_teacher(cfg: PoseTrainConfig) -> PatchPoseNet:
    """The fixed distillation teacher ``cfg.distill`` (evaluation mode, no gradients).

    Raises:
        ValueError: missing or foreign weights, or a teacher whose patch size or scale histogram
            differs from ``cfg.model``'s.
    """
    try:
        t = load_pose_model(cfg.distill)
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
    config_class = PoseTrainConfig

    def __init__(self, cfg: PoseTrainConfig) -> None:
        self.cfg = cfg
        self.teacher = _load_teacher(cfg) if cfg.distill is not None else None

    def __getstate__(self) -> dict:
        # batch-synthesis workers receive the task (for make_batch) and never use the teacher: under
        # the spawn start method it would otherwise be pickled into each of them
        return {**self.__dict__, "teacher": None}

    def build_model(self) -> PatchPoseNet:
        return PatchPoseNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        def load(p: str) -> PatchPoseNet:
            model = load_pose_model(p)
            model.set_c4_below(self.cfg.model.c4_below)  # exported weights' threshold: inference, not architecture
            return model

        return init_state_from(load, path, self.cfg.model)

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


__all__ = ["PoseTask", "evaluate_pairs", "make_synthesizers", "pair_loss"]
