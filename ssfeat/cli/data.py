"""``ssfeat data {make-geoloc,make-sequences,warp-pair}``: datasets and pairs synthesised from photos."""

from __future__ import annotations

from ..data.geoloc import GeolocMakeConfig, make_geoloc_dataset
from ..data.images import read_usable
from ..data.synthetic_sequences import SyntheticSequenceConfig, make_synthetic_sequences
from ..data.warp_pairs import WarpPairConfig, WarpPairSynthesizer, draw_pair
from .args import add_field, config_from_args, device, fraction, non_negative, positive
from .demo import warp_demo


def run_make_geoloc(args) -> int:
    try:
        splits = tuple(float(v) for v in args.splits.split(","))
    except ValueError:
        raise ValueError(f"--splits expects three comma-separated fractions, got {args.splits!r}") from None
    cfg = GeolocMakeConfig(n_gallery=args.n_gallery, n_queries=args.n_queries, k=args.k, splits=splits, seed=args.seed)
    meta = make_geoloc_dataset(args.images, args.out, cfg)
    for s, c in meta["counts"].items():
        print(f"{s}: {c['places']} places, {c['gallery']} gallery, {c['queries']} queries")
    print(f"dataset (synthetic positions): {args.out}; {len(meta['skipped'])} unusable photos skipped")
    return 0


SEQUENCE_FIELDS = ("n_targets", "max_side", "min_log2_zoom", "max_log2_zoom", "perspective", "max_rotation_deg", "seed")


def run_make_sequences(args) -> int:
    cfg = config_from_args(SyntheticSequenceConfig, args, SEQUENCE_FIELDS)
    meta = make_synthetic_sequences(args.images, args.out, cfg, limit=args.limit)
    for s in meta["skipped"]:
        print(f"skipped: {s}")
    n = len(meta["sequences"])
    print(f"{n} sequences, {n * cfg.n_targets} pairs, {len(meta['skipped'])} photos skipped: {args.out}")
    return 0


def run_warp_pair(args) -> int:
    img = read_usable(args.image)
    if args.weights:
        print(f"figure: {warp_demo(img, args.out, args.weights, args.k, args.seed, args.size, args.device)}")
        return 0
    synth = WarpPairSynthesizer([img], WarpPairConfig(size=args.size or 128, k=args.k, seed=args.seed))
    print(f"figure: {draw_pair(img, synth.sample(0), args.out)}")
    return 0


def _add_make_geoloc(data) -> None:
    p = data.add_parser("make-geoloc", help="a synthetic geolocalization dataset from photos (positions synthetic)")
    p.set_defaults(command=run_make_geoloc)
    p.add_argument("--images", required=True, help="source photos (one place per photo)")
    p.add_argument("--out", required=True, help="new dataset folder (ROOT/images/{train,val,test}/...)")
    add_field(p, GeolocMakeConfig, "n_gallery", "gallery views per place", type=positive)
    add_field(p, GeolocMakeConfig, "n_queries", "query views per place", type=positive)
    add_field(p, GeolocMakeConfig, "k", "trapezoid distortion in [0, 1] (a float)", type=fraction)
    splits = ",".join(map(str, GeolocMakeConfig.splits))
    p.add_argument("--splits", default=splits, help="train,val,test shares of the places")
    add_field(p, GeolocMakeConfig, "seed", type=non_negative)


def _add_make_sequences(data) -> None:
    p = data.add_parser(
        "make-sequences",
        help="HPatches-layout sequences with exact homographies from photos (for benchmark sequences/matching)",
    )
    p.set_defaults(command=run_make_sequences)
    p.add_argument("--images", required=True, help="source photos (one sequence per photo)")
    p.add_argument("--out", required=True, help="new folder of sequences (ROOT/v_*/1.png, 2.png, H_1_2, ...)")
    cls = SyntheticSequenceConfig
    add_field(p, cls, "n_targets", "target views per photo", aliases=("--targets",), type=positive)
    p.add_argument("--limit", type=positive, default=None, help="use only the first N photos (sorted)")
    add_field(p, cls, "max_side", "reduce photos to this longer side", type=positive)
    zoom = "log2 magnification range of the targets"
    add_field(p, cls, "min_log2_zoom", zoom, aliases=("--min-zoom",))
    add_field(p, cls, "max_log2_zoom", None, aliases=("--max-zoom",))
    add_field(p, cls, "perspective", "corner displacement of the last target (0: none)")
    add_field(p, cls, "max_rotation_deg", "in-plane rotation of the targets within +-this many degrees (180: full)")
    add_field(p, cls, "seed", type=non_negative)


def _add_warp_pair(data) -> None:
    p = data.add_parser("warp-pair", help="draw a self-supervised homography pair (GeoWarp's four images)")
    p.set_defaults(command=run_warp_pair)
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--k", type=fraction, default=0.6, help="trapezoid distortion in [0, 1] (a float)")
    p.add_argument(
        "--size",
        type=positive,
        default=None,
        help="side of the views (px; default 128, or the regressor's with --weights)",
    )
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--weights", default=None, help="also draw this warping regressor's prediction ('warp': bundled)")
    device(p)


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_cmd", required=True)
    for add in (_add_make_geoloc, _add_make_sequences, _add_warp_pair):
        add(data)


__all__ = ["add_parser"]
