"""The examples of the README and of the doc pages listed here run as written, in an empty folder
(on the bundled sample photos): the Python blocks, and the ``ssfeat`` commands of the README's shell
blocks."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = [ROOT / "docs" / "keypoint_pose.md", ROOT / "docs" / "geolocalization.md"]
# README shell commands that set up a machine or run this suite: shown, not run by the tests
SETUP = (r"pip install \S.*", r"python -m pytest .*")


def _python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _shell_commands(path: Path = README) -> list[str]:
    """The commands of the ``bash`` blocks (``a && b`` is two; comments dropped)."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            cmds += [c.strip() for c in line.split("#", 1)[0].split("&&") if c.strip()]
    return cmds


def _ssfeat_commands() -> list[str]:
    return [c for c in _shell_commands() if c.startswith("ssfeat ")]


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 4


def test_every_readme_shell_command_is_setup_or_run_by_the_tests():
    cmds = _shell_commands()
    assert "ssfeat demo" in cmds
    for c in cmds:
        assert c.startswith("ssfeat ") or any(re.fullmatch(p, c) for p in SETUP), c


@pytest.mark.parametrize("i", range(len(_python_blocks())))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    code = _python_blocks()[i]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102


@pytest.mark.slow
@pytest.mark.parametrize("cmd", _ssfeat_commands())
def test_readme_shell_command_runs(cmd, tmp_path):
    """As pasted in a shell, in an empty folder, with this checkout's ``ssfeat`` importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "ssfeat", *shlex.split(cmd)[1:]]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_doc_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks(page)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page.name} python block {i}", "exec"), {})  # noqa: S102


def test_sample_images_are_bundled_readable_photos():
    from ssfeat import sample_images
    from ssfeat.data.images import read_image

    paths = sample_images()
    assert len(paths) >= 2 and paths == sorted(paths)
    for p in paths:
        img = read_image(p)
        assert img.ndim == 2 and min(img.shape) >= 200 and img.std() > 0.05
