"""Command-line interface: ``ssfeat {train,export,benchmark,show,match,data,extract,pairs,match-pairs,colmap,
detect,demo}``.

One module per command group, each with ``add_parser(subparsers)``; every (sub)command parser sets
``command``, the function that runs it, so :func:`main` dispatches by table, not by name. Options that
set a config field are named as the field (``--ema-decay`` sets ``ema_decay``). Bad input ends with
a one-line ``ssfeat: error: ...`` message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..data.images import ImageReadError
from ..version import __version__
from . import benchmark, data, demo, export, extract, figures, sfm, train
from .args import DefaultsHelpFormatter, set_threads, show_defaults

logger = logging.getLogger("ssfeat")

# command groups in the order ``ssfeat --help`` lists them
COMMANDS = (train, export, benchmark, figures, data, extract, sfm, demo)

PATH_ARGS = ("--images", "--root", "--out", "--json", "--plot", "run", "image", "image0", "image1")
PATH_ARGS += ("--features", "--pairs", "--matches", "--database")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssfeat", description="Self-supervised local feature geometry.", formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ssfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for group in COMMANDS:
        group.add_parser(sub)
    show_defaults(parser)
    return parser


def _refuse_empty_paths(args) -> None:
    """An empty path would silently mean the current folder (``Path("") == Path(".")``)."""
    for arg in PATH_ARGS:
        v = getattr(args, arg.lstrip("-"), None)
        if any(isinstance(x, str) and not x.strip() for x in (v if isinstance(v, list) else [v])):
            raise ValueError(f"{arg} is an empty path")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. A closed output pipe (``ssfeat ... | head -1``)
    ends the command quietly with status 141 (128 + SIGPIPE), as command-line tools do."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # a pipe closed after the last print shows here
        return status
    except BrokenPipeError:
        # later writes (and the flush at exit) go nowhere instead of raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        _refuse_empty_paths(args)
        set_threads(getattr(args, "threads", 0))
        return args.command(args)
    except BrokenPipeError:
        raise
    except (ValueError, OSError, ImageReadError, FloatingPointError) as e:
        print(f"ssfeat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssfeat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
