"""The scale-pose task: log-polar scale histograms of corresponding keypoints of a photo and a
zoomed, turned view, aligned by the zoom (histogram alignment along the rings)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ...data.view_pairs import ViewPairSynthesizer
from ...models.patch_pose import histogram_peaks
from ...models.scale_pose import LogPolarScaleNet
from ...models.weights import load_scale_model
from ..configs import ScalePoseTrainConfig
from ..inputs import init_state_from, split_images
from ..losses import histogram_alignment_loss, mode_agreement_loss


@torch.no_grad()
def evaluate_scale_pairs(model: LogPolarScaleNet, val: dict, chunk: int = 1024) -> dict[str, float]:
    """Relative log2 scale accuracy (within 1/6 and 1/3 octave) of ``model`` on view-pair batches
    (``lp0``, ``lp1`` log-polar patches, ``log2_zoom``)."""
    was_training = model.training
    model.eval()
    L = model.config.rings_per_octave

    def peak(lp: torch.Tensor) -> torch.Tensor:
        z = torch.cat([model(lp[i : i + chunk]) for i in range(0, len(lp), chunk)])
        return histogram_peaks(F.softmax(z, -1), 1, circular=False)[0][:, 0] / L

    err = (peak(val["lp1"]) - peak(val["lp0"]) - val["log2_zoom"]).abs()
    model.train(was_training)
    return {
        "scale_acc@0.167": 100.0 * (err <= 1 / 6).float().mean().item(),
        "scale_acc@0.333": 100.0 * (err <= 1 / 3).float().mean().item(),
    }


def mean_octave(logits: torch.Tensor, rings_per_octave: int) -> torch.Tensor:
    """Mean over the batch of the histograms' expected ring index in octaves (``(B, n_rings)``
    logits -> scalar; 0 is the first ring)."""
    ring = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype) / rings_per_octave
    return (F.softmax(logits, -1) * ring).sum(-1).mean()


class ScalePoseTask:
    """Scale-covariant keypoint scale by histogram alignment along the log-polar rings."""

    name = "scalepose"
    config_class = ScalePoseTrainConfig
    postfix = {"sca13": "scale_acc@0.333"}

    def __init__(self, cfg: ScalePoseTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> LogPolarScaleNet:
        return LogPolarScaleNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        return init_state_from(load_scale_model, path, self.cfg.model)

    def synthesizers(self) -> tuple[ViewPairSynthesizer, ViewPairSynthesizer]:
        _, images, _, vimages = split_images(self.cfg, min_size=64)
        grid = self.cfg.model.grid
        val_cfg = dataclasses.replace(self.cfg.pairs, seed=self.cfg.pairs.seed + 1)
        return ViewPairSynthesizer(images, grid, self.cfg.pairs), ViewPairSynthesizer(vimages, grid, val_cfg)

    def make_batch(self, synth: ViewPairSynthesizer, indices) -> dict:
        return synth.batch(indices)

    def val_batch(self, synth: ViewPairSynthesizer) -> dict:
        return self.make_batch(synth, range(self.cfg.val_pairs))

    def loss(self, net, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        z0, z1 = net(torch.cat([batch["lp0"], batch["lp1"]])).chunk(2)
        shift = batch["log2_zoom"] * self.cfg.model.rings_per_octave
        align = histogram_alignment_loss(z0, z1, shift, circular=False, temperature=self.cfg.temperature)
        logs = {"loss_scale": align.item()}
        loss = align
        if self.cfg.mode_weight > 0:
            mode = mode_agreement_loss(z0, z1, shift, circular=False)
            loss = loss + self.cfg.mode_weight * mode
            logs["loss_mode"] = mode.item()
        if self.cfg.locality > 0:
            octave = mean_octave(torch.cat([z0, z1]), self.cfg.model.rings_per_octave)
            loss = loss + self.cfg.locality * octave
            logs["mean_octave"] = octave.item()
        return loss, logs

    def evaluate(self, model, val: dict) -> dict[str, float]:
        return evaluate_scale_pairs(model, val)

    @staticmethod
    def score(m: dict[str, float]) -> float:
        return m["scale_acc@0.333"]


__all__ = ["ScalePoseTask", "evaluate_scale_pairs", "mean_octave"]
