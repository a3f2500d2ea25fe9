"""``ssfeat extract``: features of every image of a folder into one HDF5 file (resumable; sharded
over the processes under ``torchrun``)."""

from __future__ import annotations

from .. import distributed as du
from ..inference.pose import check_device
from ..pipeline.extract import FORMATS, ExtractConfig, extract_folder
from .args import add_field, device, non_negative, positive, sift_first_octave, threads


def run(args) -> int:
    cfg = ExtractConfig(
        args.pipeline,
        args.max_keypoints,
        args.max_side,
        args.part_size,
        args.sift_first_octave,
        args.format,
        device=args.device,
        batch_size=args.batch_size,
    )
    du.init_from_env(check_device(args.device))  # under torchrun: shard the images over the processes
    rank = du.rank()
    try:
        st = extract_folder(args.images, args.out, cfg, workers=args.workers, progress=not args.no_progress)
    finally:
        du.cleanup()
    if rank == 0:
        print(
            f"{st['n_done']} of {st['n_images']} images in {args.out} ({st['n_skipped']} skipped); "
            f"this run: {st['n_new']} new in {st['seconds']:.1f} s, {st['images_per_s']} images/s"
        )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("extract", help="features of every image of a folder into one HDF5 file (resumable)")
    p.set_defaults(command=run)
    p.add_argument("--images", required=True, help="image folder (recursive)")
    p.add_argument("--out", required=True, help="output .h5 file (run again to resume)")
    add_field(p, ExtractConfig, "pipeline", "named pipeline (see ssfeat match --help)")
    add_field(p, ExtractConfig, "max_keypoints", type=positive)
    add_field(p, ExtractConfig, "max_side", "shrink larger images (0: never)")
    add_field(p, ExtractConfig, "part_size", "images per part file", type=positive)
    sift_first_octave(p)
    add_field(
        p,
        ExtractConfig,
        "format",
        "layout of the image groups: ssfeat (default; ssfeat's own units, lossless) or hloc (for hloc's "
        "match_features and COLMAP import)",
        choices=FORMATS,
    )
    device(p)
    add_field(
        p,
        ExtractConfig,
        "batch_size",
        "images read and described together (the dense descriptor runs same-sized ones in one forward pass)",
        type=positive,
    )
    p.add_argument("--workers", type=non_negative, default=0, help="extraction processes (0/1: this process)")
    threads(p)
    p.add_argument("--no-progress", action="store_true")


__all__ = ["add_parser"]
