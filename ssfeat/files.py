"""Writing files safely: the one atomic-write implementation every writer of ssfeat uses.

:func:`atomic_write` hands out a temporary file created exclusively (``O_EXCL``, a random name, so a
file or symbolic link planted at a predictable name is never followed) in the target's own folder,
and renames it over the target only when the writer finished: readers see the old file or the new
one, never a part. On any failure the temporary file is removed, and a failed write (a full disk,
a quota) is raised as one :class:`OSError` naming the target. Temporary files of processes that were
killed mid-write are removed by the next write of the same target and by :func:`remove_stale_temps`.

Temporary names: ``.{target name}.{pid}.{random}.tmp`` next to the target.

:class:`OutputLock` keeps two ssfeat processes from writing one output: an exclusive, non-blocking
``flock`` on a lock file (``.{target name}.lock`` next to a file, ``.ssfeat.lock`` inside a folder),
which the system releases when the holder exits or is killed. The holder removes the lock file when
it is done; one a killed process left is empty and unlocked (holding it, not its existence, is the
lock), and taken over by the next writer.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None

TEMP_SUFFIX = ".tmp"
# .NAME.PID.RANDOM.tmp (this module), or .NAME.tmpPID (written by earlier versions)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp|tmp(?P<old_pid>\d+))$")


class AtomicFile(io.FileIO):
    """The raw temporary file :func:`atomic_write` writes through; it keeps the first failed write
    (tests replace :meth:`raw_write` to simulate a full disk)."""

    error: OSError | None = None

    def write(self, b) -> int:
        try:
            return self.raw_write(b)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise

    def raw_write(self, b) -> int:
        return super().write(b)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files that processes no longer running left in ``folder`` (those of
    target ``name`` only, if given); returns the removed paths. Temporary files of live processes
    (another writer, this process) are left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        if _process_alive(int(m["pid"] or m["old_pid"])):
            continue
        try:
            os.unlink(entry.path)  # a link is removed, never followed
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
    return removed


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read it
    would briefly change it for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_failed(path: Path, err: OSError) -> OSError:
    """``OSError("cannot write PATH: REASON")`` with the ``errno`` of ``err``."""
    e = OSError(f"cannot write {path}: {err.strerror or err}")
    e.errno = err.errno
    return e


@contextmanager
def atomic_write(path: str | Path) -> Iterator[io.BufferedRandom]:
    """Write ``path`` atomically: yields a binary file (readable and seekable, as h5py needs) that
    replaces ``path`` when the block ends without an error. The file gets the mode a newly created
    file would (``0o666`` less the umask).

    Raises:
        OSError: the file could not be written (``"cannot write PATH: REASON"``); nothing is left
            behind and an existing ``path`` is unchanged.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale_temps(folder, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as e:
        raise _write_failed(path, e) from e
    raw, written = AtomicFile(fd, "r+"), False
    try:
        with io.BufferedRandom(raw) as f:
            yield f
            written = True
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # a failed write of the file (libraries such as torch and h5py turn it into errors of their
        # own), or of flushing, syncing or renaming it; errors of the writer itself pass unchanged
        err = raw.error if raw.error is not None else e if written and isinstance(e, OSError) else None
        if err is not None and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise _write_failed(path, err) from e
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """``data`` to ``path`` with :func:`atomic_write`; returns ``path``."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` with :func:`atomic_write`; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


class OutputLockedError(OSError):
    """Another process holds the lock of an output (:class:`OutputLock`)."""


class OutputLock:
    """An exclusive lock on an output, held between :meth:`acquire` and :meth:`release` (or over a
    ``with`` block). ``target`` is a file (the lock file ``.NAME.lock`` is put next to it) or, with
    ``folder=True``, a folder (the lock file ``.ssfeat.lock`` is put inside it). :meth:`acquire`
    creates the folder holding the lock file if needed.

    The lock is an ``flock`` on the lock file: released by the system when the process ends, however
    it ends, so a killed run never leaves a stale lock. Without ``fcntl`` (Windows) nothing is locked.
    """

    def __init__(self, target: str | Path, folder: bool = False) -> None:
        self.target = Path(target)
        full = self.target.absolute()  # "." has no name
        self.path = full / ".ssfeat.lock" if folder else full.parent / f".{full.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock (a no-op if this object holds it already).

        Raises:
            OutputLockedError: ``"another ssfeat process is writing TARGET"``.
            OSError: the lock file could not be created.
        """
        if self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a link planted at the lock's name is never followed
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        while True:
            fd = os.open(self.path, flags, 0o666)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputLockedError(f"another ssfeat process is writing {self.target}") from None
            if self._is_current(fd):
                break
            os.close(fd)  # locked a file its holder removed on release: lock the new one
        self.fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        """True if ``fd`` is still the file at the lock's path (not one removed meanwhile)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def release(self) -> None:
        """Give the lock up and remove the lock file (a no-op if the lock is not held)."""
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still locked: a process that opened it retries
            except FileNotFoundError:
                pass
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # at interpreter exit; the system releases the lock anyway
            pass


__all__ = [
    "AtomicFile",
    "OutputLock",
    "OutputLockedError",
    "atomic_write",
    "remove_stale_temps",
    "write_bytes_atomic",
    "write_text_atomic",
]
