"""Argument helpers of the command line: checked argument types, options derived from config
dataclass fields (each field written once: its flag is ``--field-name``, its type and default are
the field's), hidden aliases for earlier flag names, and output-path checks."""

from __future__ import annotations

import argparse
import math
import tempfile
import typing
from pathlib import Path

from ..inference.pose import check_device


def positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    v = float(text)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return v


def non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def flag(name: str) -> str:
    """The command-line flag of a config field: ``ema_decay`` -> ``--ema-decay``."""
    return "--" + name.replace("_", "-")


def field_info(cls: type, path: str) -> tuple[type, object]:
    """The annotated type and the default of the (possibly nested, ``"model.backbone"``) field
    ``path`` of the dataclass ``cls``."""
    obj, owner = cls(), cls
    *parents, name = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
        owner = type(obj)
    hints = typing.get_type_hints(owner)
    return hints[name], getattr(obj, name)


def _base_type(tp) -> type:
    """``int`` of ``int | None`` and the like."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args and typing.get_origin(tp) is not tuple else tp


def add_field(p, cls: type, path: str, help: str | None = None, aliases: tuple[str, ...] = (), **kwargs) -> None:
    """Add the option of config field ``path`` of ``cls`` to parser ``p``: flag ``--leaf-name``,
    ``dest`` the leaf name, default and type from the field (``kwargs`` override them, e.g. a
    checked ``type=positive``); a bool field becomes ``--name`` / ``--no-name``. ``aliases`` are
    earlier flag names, accepted but not shown in ``--help``."""
    tp, default = field_info(cls, path)
    name = path.rsplit(".", 1)[-1]
    base = _base_type(tp)
    if base is bool and "action" not in kwargs:
        kwargs.setdefault("action", argparse.BooleanOptionalAction)
    elif "action" not in kwargs:
        kwargs.setdefault("type", base)
    kwargs.setdefault("default", default)
    p.add_argument(flag(name), dest=name, help=help, **kwargs)
    for old in aliases:
        hidden = {k: v for k, v in kwargs.items() if k not in ("default", "help", "metavar")}
        if hidden.get("action") is argparse.BooleanOptionalAction:
            hidden["action"] = "store_true"
        p.add_argument(old, dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden)


def config_from_args(cls: type, args, paths, **values):
    """An instance of the config dataclass ``cls`` from the parsed ``args``: each of ``paths``
    (``"field"`` or ``"sub.field"`` of a nested config) takes ``args.<leaf>``; ``values`` (by path)
    take given values instead. Nested configs are built from their given fields (the rest keep
    their defaults), then ``cls`` from its own."""
    given = {p: getattr(args, p.rsplit(".", 1)[-1]) for p in paths}
    given.update({k.replace("__", "."): v for k, v in values.items()})
    top = {k: v for k, v in given.items() if "." not in k}
    hints = typing.get_type_hints(cls)
    for sub in {k.split(".", 1)[0] for k in given if "." in k}:
        kw = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(sub + ".")}
        top[sub] = hints[sub](**kw)
    return cls(**top)


def sift_first_octave(p) -> None:
    p.add_argument(
        "--sift-first-octave",
        type=int,
        choices=(-1, 0),
        default=0,
        help="SIFT descriptor pyramid: 0 starts at the image (faster), -1 upsamples it first (OpenCV's own)",
    )


DEVICE_HELP = (
    "torch device of the networks: cpu (the default: runs anywhere, reproducible), cuda, cuda:N, mps, "
    "or auto (CUDA if available, else MPS, else CPU)"
)


def device_name(text: str) -> str:
    """A device name this machine has (``auto`` included), checked while the arguments are parsed."""
    try:
        check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def device(p, default: str | None = "cpu", help: str = DEVICE_HELP) -> None:
    """``--device``, on every command that runs a network."""
    p.add_argument("--device", type=device_name, default=default, help=help)


def threads(p, help: str | None = "torch CPU threads (0: torch default)") -> None:
    p.add_argument("--threads", type=non_negative, default=0, help=help)


def set_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, ``(default: X)``, unless the default says nothing (an
    unset ``None``, an off switch, an empty list) or the help text already states it."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        default = action.default
        silent = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if silent or not action.option_strings or "default" in text or isinstance(action, argparse._VersionAction):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and all its subcommand parsers the :class:`DefaultsHelpFormatter`, so every
    ``--help`` shows the defaults; options without help text get one that names the default."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)
        elif action.help is None and action.option_strings:
            action.help = DefaultsHelpFormatter(parser.prog)._get_help_string(action) or None


def check_writable(path: str | Path, folder: bool = False) -> None:
    """Refuse up front, before a long run, an output that could not be written at its end: a folder
    given for a file (or a file for a folder), a parent path that runs through a file, or a folder
    where no file can be created (tried with a temporary file, removed at once)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{path} is {kind}; give the {'folder' if folder else 'file'} to write")
    for parent in ((path,) if folder and path.is_dir() else ()) + tuple(path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is a file")
            try:
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as e:
                raise ValueError(f"cannot write {path}: {parent} is not writable ({e.strerror})") from e
            break


__all__ = [
    "DefaultsHelpFormatter",
    "add_field",
    "check_writable",
    "config_from_args",
    "device",
    "device_name",
    "field_info",
    "flag",
    "fraction",
    "non_negative",
    "positive",
    "positive_float",
    "set_threads",
    "show_defaults",
    "sift_first_octave",
    "threads",
]
