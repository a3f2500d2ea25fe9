"""``ssfeat pairs``, ``ssfeat match-pairs`` and ``ssfeat colmap``: from a feature file to hloc's pairs
and match files and a verified COLMAP database (structure-from-motion input)."""

from __future__ import annotations

from ..pipeline.colmap import ColmapConfig, import_colmap
from ..pipeline.match_pairs import MatchPairsConfig, match_pairs
from ..pipeline.pairs import PairsConfig, make_pairs
from .args import add_field, check_writable, device, non_negative, positive, positive_float, threads


def run_pairs(args) -> int:
    cfg = PairsConfig(args.retrieval, args.rerank)
    check_writable(args.out)
    progress = not args.no_progress
    pairs = make_pairs(args.features, args.out, cfg, images=args.images, progress=progress, device=args.device)
    kind = f"top-{cfg.retrieval} retrieval" + (f", first {cfg.rerank} re-ranked" if cfg.rerank else "")
    print(f"{len(pairs)} pairs ({kind if cfg.retrieval else 'exhaustive'}) in {args.out}")
    return 0


def run_match_pairs(args) -> int:
    cfg = MatchPairsConfig(args.pipeline, args.orientation_filter, args.ransac, args.part_size)
    check_writable(args.out)
    st = match_pairs(args.features, args.pairs, args.out, cfg, progress=not args.no_progress)
    print(
        f"{st['n_pairs']} pairs in {args.out}; this run: {st['n_new']} matched in {st['seconds']:.1f} s"
        + (f", {st['mean_matches']} matches per pair" if st["mean_matches"] is not None else "")
    )
    return 0


def run_colmap(args) -> int:
    cfg = ColmapConfig(args.max_error, args.min_num_inliers, args.max_num_trials, args.min_inlier_ratio)
    check_writable(args.database)
    try:
        st = import_colmap(args.images, args.features, args.matches, args.database, args.pairs, cfg)
    except RuntimeError as e:  # pycolmap missing: one line saying how to install it
        raise ValueError(str(e)) from e
    inl = sorted(st["inliers"].values())
    med = inl[len(inl) // 2] if inl else 0
    print(
        f"{st['n_images']} images, {st['n_pairs']} pairs into {args.database}; {st['n_verified']} pairs verified "
        f"(median {med} inlier matches)"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("pairs", help="image pairs of a feature file to match, as an hloc pairs file")
    p.set_defaults(command=run_pairs)
    p.add_argument("--features", required=True, help="feature file (ssfeat extract)")
    p.add_argument("--out", required=True, help="pairs file to write ('name0 name1' per line)")
    p.add_argument("--images", help="the image folder of the features (needed for --retrieval)")
    add_field(p, PairsConfig, "retrieval", "pair each image with its K most similar (0: all pairs)", type=non_negative)
    add_field(
        p, PairsConfig, "rerank", "re-order the first N retrieved with the homography regressor", type=non_negative
    )
    device(p)
    threads(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("match-pairs", help="match the pairs of a pairs file into an hloc match file (resumable)")
    p.set_defaults(command=run_match_pairs)
    p.add_argument("--features", required=True, help="feature file (ssfeat extract, or hloc's)")
    p.add_argument("--pairs", required=True, help="pairs file ('name0 name1' per line)")
    p.add_argument("--out", required=True, help="match file to write (run again to resume)")
    add_field(p, MatchPairsConfig, "pipeline", "matcher and filters of this pipeline (default: the features')")
    add_field(p, MatchPairsConfig, "orientation_filter", "keep matches of consistent relative orientation")
    add_field(p, MatchPairsConfig, "ransac", "keep the inliers of a RANSAC homography (planar scenes)")
    add_field(p, MatchPairsConfig, "part_size", "pairs per part file", type=positive)
    threads(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("colmap", help="features and matches into a COLMAP database, verified (needs pycolmap)")
    p.set_defaults(command=run_colmap)
    p.add_argument("--images", required=True, help="the image folder of the features")
    p.add_argument("--features", required=True, help="feature file")
    p.add_argument("--matches", required=True, help="match file (ssfeat match-pairs, or hloc's)")
    p.add_argument("--database", required=True, help="COLMAP database to create (must not exist)")
    p.add_argument("--pairs", help="pairs to import (default: every pair of the match file)")
    add_field(p, ColmapConfig, "max_error", "RANSAC inlier threshold (px)", type=positive_float)
    add_field(p, ColmapConfig, "min_num_inliers", type=positive)
    add_field(p, ColmapConfig, "max_num_trials", type=positive)
    add_field(p, ColmapConfig, "min_inlier_ratio", type=positive_float)


__all__ = ["add_parser"]
