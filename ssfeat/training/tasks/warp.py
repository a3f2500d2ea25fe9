"""The homography-regression task (GeoWarp): corner loss on trapezoid pairs, plus the consistency
and features-wise losses on weakly supervised (query, positive) pairs."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from ...data.warp_pairs import WarpPairSynthesizer
from ...evaluation.metrics import corner_metrics
from ...inference.retrieval import load_resized, mine_query_positives
from ...models.warp import WarpNet, unflip_corners
from ...models.weights import load_descriptor_model, load_warp_model
from ..configs import WarpTrainConfig
from ..inputs import init_state_from, split_images
from ..losses import consistency_loss, corner_loss, features_wise_loss

logger = logging.getLogger(__name__)


class WarpTask:
    """Homography regression (GeoWarp): see :class:`WarpTrainConfig` for the losses."""

    name = "warp"
    config_class = WarpTrainConfig

    def __init__(self, cfg: WarpTrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> WarpNet:
        net = WarpNet(self.cfg.model)
        backbone = load_descriptor_model(self.cfg.backbone_weights)
        if backbone.config != self.cfg.model.backbone:
            raise ValueError(
                f"backbone {self.cfg.backbone_weights} is {backbone.config}, not {self.cfg.model.backbone}"
            )
        net.backbone.load_state_dict(backbone.state_dict())
        return net

    def init_state(self, path: str) -> dict:
        return init_state_from(load_warp_model, path, self.cfg.model)

    def synthesizers(self):
        cfg = self.cfg
        _, images, _, vimages = split_images(cfg, min_size=cfg.pairs.size // 2)
        vcfg = dataclasses.replace(cfg.pairs, seed=cfg.pairs.seed + 1)
        qp = None
        if cfg.qp_root:
            pairs = mine_query_positives(
                cfg.qp_root, "train", load_descriptor_model(cfg.backbone_weights), min_similarity=cfg.qp_min_similarity
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


__all__ = ["WarpTask"]
