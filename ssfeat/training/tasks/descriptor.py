"""The dense-descriptor task: AP (or triplet) loss with in-batch hardest negatives on perspective
pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ... import distributed as du
from ...data.descriptor_pairs import DescriptorPairSynthesizer
from ...inference.detector import DetectConfig, KeypointDetector
from ...models.descriptor import DescriptorNet, sample_descriptors
from ...models.weights import load_descriptor_model
from ..configs import DescriptorTrainConfig
from ..inputs import init_state_from, split_images
from ..losses import ap_loss, hard_negatives, triplet_loss


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


class DetectorKeypoints:
    """The keypoint source of descriptor pairs drawn with ``keypoints="detector"``: the bundled
    detector's keypoints of a view, strongest first (loaded on first use, so in each batch-synthesis
    process, keeping ``4 n`` keypoints)."""

    def __init__(self) -> None:
        self.detector: KeypointDetector | None = None

    def __call__(self, view: np.ndarray, n: int) -> np.ndarray:
        if self.detector is None:
            self.detector = KeypointDetector.from_pretrained("detector", DetectConfig(max_keypoints=4 * n))
        return self.detector(view).keypoints.astype(np.float64)


class DescriptorTask:
    """Dense descriptors: AP (or triplet) loss with in-batch hardest negatives on perspective pairs."""

    name = "descriptor"
    config_class = DescriptorTrainConfig

    def __init__(self, cfg: DescriptorTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> DescriptorNet:
        return DescriptorNet(self.cfg.model)

    def init_state(self, path: str) -> dict:
        return init_state_from(load_descriptor_model, path, self.cfg.model)

    def synthesizers(self):
        _, images, _, vimages = split_images(self.cfg, min_size=self.cfg.pairs.size // 2)
        vcfg = dataclasses.replace(self.cfg.pairs, seed=self.cfg.pairs.seed + 1)
        source = DetectorKeypoints() if self.cfg.pairs.keypoints == "detector" else None
        return (
            DescriptorPairSynthesizer(images, self.cfg.pairs, source),
            DescriptorPairSynthesizer(vimages, vcfg, source),
        )

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


__all__ = ["DescriptorTask", "DetectorKeypoints", "descriptor_pair_terms"]
