"""Is there a cue in a single patch that it was shrunk (or magnified)? A supervised probe.

Trains a CNN (ssfeat's ``fast`` backbone, or the ResNet-18 trunk, and a 2-layer head; 4000 Adam
steps of 128 patches, random 90-degree turns) to tell the reference patch of a `benchmark patchpose`
scale pair (native resolution) from its second patch when that one is shrunk (log2 change <= -1.5,
i.e. by 2.8-4x) or magnified (>= +1.5). The pairs are drawn exactly as the benchmark draws them
(``paper_protocol``: SIFT/Harris keypoints, no rotation, no photometric change) and the patches are
standardised as PatchPoseNet's input (window 1); ``--synthesis training`` draws them as training
does instead (random reference pose with a log2 zoom in [-0.5, 0.5], photometric changes and noise on
both patches, random points too). Trained on pairs from the training photos,
scored on 2000 + 2000 patches from the test photos. 50% is chance.

    python docs/experiments/shrink_discriminator.py --side shrink
    python docs/experiments/shrink_discriminator.py --side magnify
    python docs/experiments/shrink_discriminator.py --side shrink --backbone resnet18   # the paper's trunk
    python docs/experiments/shrink_discriminator.py --side shrink --synthesis training
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssfeat.data.synthesis import PairConfig, PairSynthesizer
from ssfeat.evaluation.patchpose import paper_protocol
from ssfeat.models.layers import BACKBONES
from ssfeat.models.patch_pose import standardize


def patches(root: str, n: int, side: str, seed: int, synthesis: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` reference patches (label 0) and ``n`` shrunk/magnified second patches (label 1)."""
    cfg = PairConfig(seed=seed)
    synth = PairSynthesizer.from_folder(root, paper_protocol(cfg) if synthesis == "benchmark" else cfg)
    ref, moved, i = [], [], 0
    while len(moved) < n:
        p0, p1, _, lsc = synth.sample("scale", i)
        i += 1
        if (lsc <= -1.5) if side == "shrink" else (lsc >= 1.5):
            ref.append(p0)
            moved.append(p1)
    x = torch.from_numpy(np.stack(ref + moved))[:, None]
    return x, torch.cat([torch.zeros(n), torch.ones(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["shrink", "magnify"], required=True)
    ap.add_argument("--train-images", required=True, help="folder of training photos")
    ap.add_argument("--test-images", required=True, help="folder of image-disjoint test photos")
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--backbone", default="fast", choices=["fast", "resnet18"])
    ap.add_argument("--synthesis", default="benchmark", choices=["benchmark", "training"])
    args = ap.parse_args()
    torch.manual_seed(0)
    xtr, ytr = patches(args.train_images, args.n_train, args.side, 0, args.synthesis)
    xte, yte = patches(args.test_images, 2000, args.side, 1, args.synthesis)
    make, dim, _ = BACKBONES[args.backbone]
    net = nn.Sequential(make(), nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 1))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=args.steps)
    for _ in range(args.steps):
        idx = torch.randint(len(xtr), (128,))
        x = torch.rot90(standardize(xtr[idx], 1.0), int(torch.randint(4, ())), (-2, -1))
        loss = F.binary_cross_entropy_with_logits(net(x).squeeze(1), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(standardize(c, 1.0)).squeeze(1) for c in xte.split(1000)])
    acc = ((logits > 0).float() == yte).float().mean().item() * 100
    out = {"side": args.side, "backbone": args.backbone, "synthesis": args.synthesis}
    print(json.dumps({**out, "test_accuracy_%": round(acc, 1), "chance_%": 50.0}))


if __name__ == "__main__":
    main()
