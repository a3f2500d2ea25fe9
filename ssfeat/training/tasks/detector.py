"""The keypoint-detector task: dense orientation alignment + MSIP on synthetic view pairs."""

from __future__ import annotations

import dataclasses

import torch

from ...data.homography_pairs import HomographyPairSynthesizer
from ...evaluation.detector import pair_metrics
from ...geometry import visibility_masks
from ...models.detector import OrientedKeypointNet
from ...models.weights import load_detector_model
from ..configs import DetectorTrainConfig
from ..inputs import init_state_from, split_images
from ..losses import dense_orientation_loss, msip_loss


class DetectorTask:
    """Oriented keypoint detector: dense orientation alignment + MSIP on synthetic view pairs."""

    name = "detector"
    config_class = DetectorTrainConfig

    def __init__(self, cfg: DetectorTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> OrientedKeypointNet:
        return OrientedKeypointNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        return init_state_from(load_detector_model, path, self.cfg.model)

    def synthesizers(self):
        _, images, _, vimages = split_images(self.cfg, min_size=self.cfg.pairs.size)
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
        was = model.training
        model.eval()
        out = pair_metrics(model, val, border=self.cfg.border)
        model.train(was)
        return out

    @staticmethod
    def score(m: dict[str, float]) -> float:
        return m["rep@3px"] + m["ori_acc@10deg"]

    postfix = {"rep": "rep@3px", "ori10": "ori_acc@10deg"}


__all__ = ["DetectorTask"]
