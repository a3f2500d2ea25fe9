"""ssfeat.files: the one atomic write (exclusive temporary files, no links followed, nothing left
behind on failure, stale temporary files of killed writers removed)."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from ssfeat import files
from ssfeat.files import atomic_write, remove_stale_temps, write_bytes_atomic


def full_disk(monkeypatch, after: int = 0) -> None:
    """Make every atomic write fail with ENOSPC once ``after`` bytes were written."""
    written = {"n": 0}
    real = files.AtomicFile.raw_write

    def write(self, b):
        if written["n"] + len(b) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written["n"] += len(b)
        return real(self, b)

    monkeypatch.setattr(files.AtomicFile, "raw_write", write)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_planted_link_at_the_old_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the names the earlier versions used
        (run / f".last.pt.tmp{pid}").symlink_to(victim)
    write_bytes_atomic(run / "last.pt", b"new")
    assert victim.read_text() == "keep" and (run / "last.pt").read_bytes() == b"new"
    assert not (run / "last.pt").is_symlink()


def test_the_temporary_file_is_exclusive_in_the_target_folder_and_gets_the_umask_mode(tmp_path):
    seen = []
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.bin") as f:
            names = [p.name for p in tmp_path.iterdir()]
            seen += names
            f.write(b"x")
    finally:
        os.umask(old)
    assert len(seen) == 1 and seen[0].startswith(f".a.bin.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_full_disk_is_one_error_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    full_disk(monkeypatch, after=10)
    with pytest.raises(OSError, match=r"^cannot write .*out\.bin: No space left on device$") as e:
        with atomic_write(target) as f:
            f.write(b"y" * 100_000)
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_errors_of_the_writer_pass_unchanged_and_leave_nothing(tmp_path):
    with pytest.raises(KeyError):
        with atomic_write(tmp_path / "x") as f:
            f.write(b"part")
            raise KeyError("writer bug")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = dead_pid(), os.getppid()
    stale = [tmp_path / f".last.pt.{dead}.abc123.tmp", tmp_path / f".last.pt.tmp{dead}"]
    kept = [tmp_path / f".last.pt.{live}.xyz.tmp", tmp_path / f".best.pt.{dead}.q.tmp", tmp_path / "notes.tmp"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    write_bytes_atomic(tmp_path / "last.pt", b"new")  # a write removes its own target's stale files
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path) == [tmp_path / f".best.pt.{dead}.q.tmp"]  # the whole folder
    assert all(p.exists() for p in kept[0::2])


def test_an_output_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "sub" / "f.h5"
    with files.OutputLock(out) as held:
        assert held.path == tmp_path / "sub" / ".f.h5.lock"
        with pytest.raises(files.OutputLockedError, match=f"^another ssfeat process is writing {out}$"):
            files.OutputLock(out).acquire()
        files.OutputLock(tmp_path / "sub" / "g.h5").acquire().release()  # other outputs are free
    files.OutputLock(out).acquire().release()  # released at the end of the block
    run = files.OutputLock(tmp_path / "run", folder=True)
    assert run.path == tmp_path / "run" / ".ssfeat.lock"
    # another process holds it; killed, it leaves no stale lock behind
    code = "import sys; from ssfeat.files import OutputLock; lock = OutputLock(sys.argv[1]).acquire()\n"
    code += "print(1, flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"1"
        with pytest.raises(files.OutputLockedError):
            files.OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    files.OutputLock(out).acquire().release()
    assert not out.parent.joinpath(".f.h5.lock").exists()  # removed by its holder
    stale = files.OutputLock(out)  # a killed holder's file is taken over
    stale.path.write_bytes(b"")
    stale.acquire()
    assert stale._is_current(stale.fd)
    stale.release()


def test_an_output_lock_opened_just_before_its_holder_removed_it_locks_the_new_file(tmp_path, monkeypatch):
    real_open, calls = os.open, []

    def open_then_removed(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not calls:  # the holder releases (removes the file) between this open and the flock
            calls.append(path)
            os.unlink(path)
        return fd

    monkeypatch.setattr(files.os, "open", open_then_removed)
    lock = files.OutputLock(tmp_path / "f.h5").acquire()
    monkeypatch.undo()
    assert calls and lock._is_current(lock.fd)  # holds the file at the path, so others see the lock
    with pytest.raises(files.OutputLockedError):
        files.OutputLock(tmp_path / "f.h5").acquire()
    lock.release()
