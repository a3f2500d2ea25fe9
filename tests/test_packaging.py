"""The declared package metadata: dependency ranges (never pins), extras, classifiers."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


@pytest.fixture(scope="module")
def project():
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _requirements(project) -> list[Requirement]:
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_no_dependency_is_pinned_and_each_has_a_lower_bound(project):
    for req in _requirements(project):
        ops = {s.operator for s in req.specifier}
        assert not ops & {"==", "===", "~="}, f"{req} pins a version"
        assert ">=" in ops, f"{req} has no lower bound"


@pytest.mark.parametrize("version", ["2.1.0", "2.4.1", "2.6.0", "2.13.0"])
def test_torch_range_admits_every_supported_release(project, version):
    torch = next(r for r in _requirements(project) if r.name == "torch")
    assert torch.specifier.contains(version)


def test_kornia_range_and_extras(project):
    reqs = {r.name: r for r in _requirements(project)}
    assert reqs["kornia"].specifier.contains("0.7.0") and reqs["kornia"].specifier.contains("0.9.0")
    assert any(Requirement(r).name == "pycolmap" for r in project["optional-dependencies"]["colmap"])
    assert "pycolmap" not in {Requirement(r).name for r in project["dependencies"]}  # optional only


def test_classifiers(project):
    cls = project["classifiers"]
    assert "License :: OSI Approved :: MIT License" in cls
    py = [c.rsplit(" :: ", 1)[-1] for c in cls if c.startswith("Programming Language :: Python :: 3.")]
    assert "3.10" in py and all(tuple(map(int, v.split("."))) >= (3, 10) for v in py)
    assert project["requires-python"] == ">=3.10"
