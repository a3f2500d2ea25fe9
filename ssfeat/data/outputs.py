"""Dataset folders written by ``ssfeat data``: every file written atomically and checked, and a
folder an interrupted run left behind completed by running the same command again.

While a dataset is being made its folder holds ``.ssfeat-progress.json``, the settings it is made
with; the last step writes the dataset's own description (``dataset.json``, ``sequences.json``)
and removes that marker. A rerun into a folder with the marker and the same settings resumes;
any other non-empty folder is refused. One process makes a dataset at a time: from
:func:`start_output` to :func:`finish_output` it holds the folder's lock (``.OUT.lock`` next to it,
:class:`ssfeat.files.OutputLock`), and a second run stops with "another ssfeat process is writing OUT".
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..files import OutputLock, remove_stale_temps, write_bytes_atomic, write_text_atomic

PROGRESS = ".ssfeat-progress.json"
_LOCKS: dict[Path, OutputLock] = {}  # the dataset folders this process is making


def _lock(out: Path) -> OutputLock:
    """Take (or keep) this process's lock of the dataset folder ``out``."""
    key = out.absolute()
    lock = _LOCKS.get(key) or OutputLock(out)
    lock.acquire()
    _LOCKS[key] = lock
    return lock


def start_output(out: str | Path, settings: dict, check_only: bool = False) -> bool:
    """Make ``out`` ready for a dataset made with ``settings`` (JSON-able): a new or empty folder,
    or the folder of an interrupted run with the same settings. Returns True when resuming.
    ``check_only``: only refuse a folder that cannot be used, create nothing.

    Raises:
        ValueError: ``out`` is a file, holds something else, or was started with other settings.
        OutputLockedError: another process is making a dataset in ``out``.
    """
    out = Path(out)
    if not check_only:
        _lock(out)  # held until finish_output (or the end of the process)
    elif out.is_dir() and out.absolute() not in _LOCKS:
        with OutputLock(out):  # refuse a folder another process is making before any work
            pass
    marker = out / PROGRESS
    settings = json.loads(json.dumps(settings))  # tuples as lists, as they are read back
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise ValueError(f"{out}: exists and is not empty")
        try:
            stored = json.loads(marker.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{out}: unreadable {PROGRESS} ({e}); use another folder") from e
        if stored != settings:
            diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ValueError(
                f"{out}: an unfinished dataset made with other settings ({', '.join(diff)}); "
                "run the same command to complete it, or use another folder"
            )
        if not check_only:
            remove_stale_temps(out)
        return True
    if check_only:
        return False
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(settings, indent=1))
    return False


def finish_output(out: str | Path, name: str, meta: dict) -> Path:
    """Write the dataset's description ``out/name`` (JSON, atomic) and remove the progress marker."""
    out = Path(out)
    path = write_text_atomic(out / name, json.dumps(meta, indent=1))
    (out / PROGRESS).unlink(missing_ok=True)
    lock = _LOCKS.pop(out.absolute(), None)
    if lock is not None:
        lock.release()
    return path


def write_image(path: str | Path, image: np.ndarray, params: tuple[int, ...] = ()) -> Path:
    """Encode ``image`` in the format of ``path``'s extension and write it atomically.

    Raises:
        ValueError: the image cannot be encoded in that format.
        OSError: ``"cannot write PATH: REASON"`` (a full disk, ...).
    """
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix, image, list(params))
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} {image.dtype} image as {path.suffix}")
    return write_bytes_atomic(path, buf.tobytes())


__all__ = ["PROGRESS", "finish_output", "start_output", "write_image"]
