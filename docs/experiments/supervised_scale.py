"""How far can a patch's scale be read on `benchmark patchpose`'s pairs? A supervised upper bound.

`benchmark patchpose` pairs a native-resolution crop (the reference, log2 scale 0) with a second crop
magnified by ``2**s``, ``s`` uniform in [-2, 2], and scores the predicted difference at +-1/3. This
script gives a PatchPoseNet the *true* scale of every view as a label (0 for references, ``s`` for
second views: a cross-entropy to a Gaussian of sigma 1/6 over the scale bins), instead of the
self-supervised alignment of the two, on pairs drawn exactly as the benchmark draws them
(``paper_protocol``) from the training photos, with random 90-degree turns and flips. It is then
scored as the benchmark scores: difference of the two views' decoded scales, on 2000 pairs of the
test photos. It learns whatever tells the views apart, the synthesis's traces included (the
reference is always an unresampled crop): a bound on what any method trained on these pairs could
score, not a method.

    python docs/experiments/supervised_scale.py                      # the bundled architecture
    python docs/experiments/supervised_scale.py --backbone fast --n-train 60000 --steps 30000
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from ssfeat.data.synthesis import PairConfig, PairSynthesizer
from ssfeat.evaluation.benchmarks import paper_protocol, scale_accuracy_by_range
from ssfeat.hub import save_weights
from ssfeat.models.patch_pose import PatchPoseConfig, PatchPoseNet, decode_pose


def pairs(root: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` benchmark scale pairs: reference patches, second patches ``(n, 1, P, P)`` and the log2
    scale changes ``(n,)``."""
    b = PairSynthesizer.from_folder(root, paper_protocol(PairConfig(seed=seed))).batch("scale", range(n))
    return b["patch0"], b["patch1"], b["log2_scale"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-images", default="../shared/data/images/train")
    ap.add_argument("--test-images", default="../shared/data/images/test/bsds500")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--json")
    ap.add_argument("--save", help="write the trained network (its orientation head untrained) here")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    a, b, s = pairs(args.train_images, args.n_train, 0)
    x = torch.cat([a, b])
    y = torch.cat([torch.zeros(len(s)), s])
    ta, tb, ts = pairs(args.test_images, 2000, 1)
    print(f"pairs drawn in {time.time() - t0:.0f} s", flush=True)
    cfg = PatchPoseConfig(backbone=args.backbone)
    net = PatchPoseNet(cfg)
    centres = torch.arange(cfg.n_scale_bins) * cfg.scale_bin_width - cfg.scale_range
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=args.steps)
    for step in range(args.steps):
        idx = torch.randint(len(x), (args.batch,))
        xb = torch.rot90(x[idx], int(torch.randint(4, ())), (-2, -1))
        if torch.rand(()) < 0.5:
            xb = xb.flip(-1)
        target = F.softmax(-0.5 * ((centres[None] - y[idx, None]) / (1 / 6)) ** 2, -1)
        loss = -(target * F.log_softmax(net.scale_logits(xb), -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    net.eval()
    with torch.no_grad():

        def scale(p: torch.Tensor) -> torch.Tensor:
            z = torch.cat([net.scale_logits(c) for c in p.split(1000)])
            return decode_pose(torch.zeros(len(z), cfg.n_ori_bins), z, cfg)["log2_scale"][:, 0]

        s0, s1 = scale(ta), scale(tb)
    err = (s1 - s0 - ts).abs()
    out = {
        "backbone": args.backbone,
        "steps": args.steps,
        "n_train_pairs": args.n_train,
        "scale_acc@0.167": float((err <= 1 / 6).float().mean() * 100),
        "scale_acc@0.333": float((err <= 1 / 3).float().mean() * 100),
        "scale_acc@0.333_by_range": scale_accuracy_by_range(s0, s1, ts, 2.0),
        "reference_within_1/3_of_0": float((s0.abs() <= 1 / 3).float().mean() * 100),
        "minutes": (time.time() - t0) / 60,
    }
    print(json.dumps(out, indent=1))
    if args.save:
        save_weights(net, args.save)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
