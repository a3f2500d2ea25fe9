"""How far can scale be read on `benchmark patchpose`'s pairs? Supervised probes.

`benchmark patchpose` pairs a native-resolution crop (the reference, log2 scale 0) with a second crop
magnified by ``2**s``, ``s`` uniform in [-2, 2], and scores the predicted change at +-1/3. These
probes are trained with the *true* scales as labels, instead of the self-supervised alignment, on
pairs drawn exactly as the benchmark draws them (``paper_protocol``) from the training photos (AdamW,
one-cycle schedule, a random 90-degree turn and flip per batch), and scored on 2000 pairs of the
test photos (seed 1: another draw than the benchmark's, from the same photos).

- ``--model view`` (a per-view probe): a PatchPoseNet's scale head learns each view's own log2 scale
  (0 for references, ``s`` for second views; cross-entropy to a Gaussian of sigma 1/6 over its 13
  bins) and is scored as the benchmark scores the patch-pose models, by the difference of the two
  views' decoded scales.
- ``--model pair`` (a pair probe): one backbone per view, shared, and a head on both views' features
  learn ``s`` itself (25 bins of 1/6 over [-2, 2], the same soft target). It may compare the two
  views, which a patch-pose model, one view at a time, cannot.

Both may read anything that tells a resampled crop from a native one, the synthesis's own traces
included: they measure what the benchmark's pairs let a network learn with labels, not a method.

    python docs/experiments/supervised_scale.py                      # per-view, the bundled architecture
    python docs/experiments/supervised_scale.py --backbone fast --n-train 60000 --steps 30000
    python docs/experiments/supervised_scale.py --model pair --backbone fast --n-train 60000 --steps 20000
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from ssfeat.data.synthesis import PairConfig, PairSynthesizer
from ssfeat.evaluation.patchpose import paper_protocol, scale_accuracy_by_range
from ssfeat.models.layers import BACKBONES, mlp_head
from ssfeat.models.patch_pose import PatchPoseConfig, PatchPoseNet, decode_pose, histogram_peaks, standardize
from ssfeat.models.weights import save_weights

MAX_S = PairConfig().max_log2_scale
SIGMA = 1 / 6  # of the soft targets, in log2 units


def pairs(root: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` benchmark scale pairs: reference patches, second patches ``(n, 1, P, P)`` and the log2
    scale changes ``(n,)``."""
    b = PairSynthesizer.from_folder(root, paper_protocol(PairConfig(seed=seed))).batch("scale", range(n))
    return b["patch0"], b["patch1"], b["log2_scale"]


def soft_target(centres: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` Gaussian targets of sigma ``SIGMA`` over bin ``centres`` ``(K,)`` around ``y`` ``(B,)``."""
    return F.softmax(-0.5 * ((centres[None] - y[:, None]) / SIGMA) ** 2, -1)


class PairProbe(nn.Module):
    """Scale change logits ``(B, K)`` from ``(B, 2, P, P)`` reference + second patches."""

    def __init__(self, backbone: str, n_bins: int) -> None:
        super().__init__()
        make, dim, hidden = BACKBONES[backbone]
        self.backbone = make()
        self.head = mlp_head(2 * dim, hidden, n_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = len(x)
        f = self.backbone(standardize(x.reshape(2 * B, 1, *x.shape[-2:]), 1.0)).reshape(B, -1)
        return self.head(f)


def augment(x: torch.Tensor) -> torch.Tensor:
    """A random 90-degree turn and (half the time) a mirror flip of the whole batch ``(B, C, P, P)``."""
    x = torch.rot90(x, int(torch.randint(4, ())), (-2, -1))
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["view", "pair"], default="view")
    ap.add_argument("--train-images", required=True, help="folder of training photos")
    ap.add_argument("--test-images", required=True, help="folder of image-disjoint test photos")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=256, help="patches (view) or pairs (pair) per step")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--json")
    ap.add_argument("--save", help="--model view: write the network (its orientation head untrained) here")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    a, b, s = pairs(args.train_images, args.n_train, 0)
    ta, tb, ts = pairs(args.test_images, 2000, 1)
    print(f"pairs drawn in {time.time() - t0:.0f} s", flush=True)
    if args.model == "view":
        cfg = PatchPoseConfig(backbone=args.backbone)
        net = PatchPoseNet(cfg)
        centres = torch.arange(cfg.n_scale_bins) * cfg.scale_bin_width - cfg.scale_range
        x, y = torch.cat([a, b]), torch.cat([torch.zeros(len(s)), s])
        logits = net.scale_logits
    else:
        net = PairProbe(args.backbone, 25)
        centres = torch.linspace(-MAX_S, MAX_S, 25)
        x, y = torch.cat([a, b], 1), s
        logits = net
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=args.steps)
    for step in range(args.steps):
        idx = torch.randint(len(x), (args.batch,))
        loss = -(soft_target(centres, y[idx]) * F.log_softmax(logits(augment(x[idx])), -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    net.eval()
    with torch.no_grad():
        if args.model == "view":
            s0, s1 = view_scale(net, ta), view_scale(net, tb)
        else:
            z = torch.cat([net(c) for c in torch.cat([ta, tb], 1).split(1000)])
            pos = histogram_peaks(F.softmax(z, -1), 1, circular=False)[0][:, 0]
            s0, s1 = torch.zeros_like(ts), pos * (centres[1] - centres[0]) - MAX_S
    err = (s1 - s0 - ts).abs()
    out = {
        "model": args.model,
        "backbone": args.backbone,
        "steps": args.steps,
        "n_train_pairs": args.n_train,
        "scale_acc@0.167": float((err <= 1 / 6).float().mean() * 100),
        "scale_acc@0.333": float((err <= 1 / 3).float().mean() * 100),
        "scale_acc@0.333_by_range": scale_accuracy_by_range(s0, s1, ts, MAX_S),
        "minutes": (time.time() - t0) / 60,
    }
    if args.model == "view":
        out["reference_within_1/3_of_0"] = float((s0.abs() <= 1 / 3).float().mean() * 100)
        if args.save:
            save_weights(net, args.save)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def view_scale(net: PatchPoseNet, patches: torch.Tensor) -> torch.Tensor:
    """Decoded log2 scales ``(N,)`` of ``(N, 1, P, P)`` patches."""
    z = torch.cat([net.scale_logits(c) for c in patches.split(1000)])
    return decode_pose(torch.zeros(len(z), net.config.n_ori_bins), z, net.config)["log2_scale"][:, 0]


if __name__ == "__main__":
    main()
