"""The Python examples of the README and of the keypoint-pose page run as written (on the bundled
sample photos)."""

import re
from pathlib import Path

import pytest

from ssfeat.data.geoloc import GeolocMakeConfig, make_geoloc_dataset
from ssfeat.data.images import samples_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = [ROOT / "docs" / "keypoint_pose.md"]


def _python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 4


@pytest.mark.parametrize("i", range(len(_python_blocks())))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    code = _python_blocks()[i]
    monkeypatch.chdir(tmp_path)
    if "load_geoloc_split(" in code:  # the example reads a dataset made by `ssfeat data make-geoloc`
        root = re.search(r'load_geoloc_split\("([^"]+)"', code).group(1)
        cfg = GeolocMakeConfig(n_gallery=1, n_queries=1, splits=(0.0, 0.0, 1.0))
        make_geoloc_dataset(samples_dir(), tmp_path / root, cfg)
    namespace: dict = {}
    exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102


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
