"""Speed numbers: every method timed in interleaved rounds after a warm-up, so one slow moment on a
shared machine does not decide a method's number."""

import time

import pytest
import torch

from ssfeat.evaluation.baselines import PoseMethod
from ssfeat.evaluation.patchpose import interleaved_throughput
from ssfeat.evaluation.timing import interleaved_seconds


def test_rounds_interleave_the_methods_after_a_warm_up():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = interleaved_seconds(fns, repeats=3)
    assert calls == ["a", "b"] * 4 and set(t) == {"a", "b"}
    calls.clear()
    interleaved_seconds(fns, repeats=2, warmup=False)
    assert calls == ["a", "b", "a", "b"]
    with pytest.raises(ValueError, match="repeats"):
        interleaved_seconds(fns, repeats=0)
    with pytest.raises(ValueError, match="reduce"):
        interleaved_seconds(fns, reduce="mean")


class _Loaded(PoseMethod):
    """A method whose calls take ``delays`` seconds in turn (a machine under changing load)."""

    predicts = ("orientation",)

    def __init__(self, name: str, delays: list[float]) -> None:
        self.name, self.delays = name, list(delays)

    def __call__(self, patches, k=1):
        time.sleep(self.delays.pop(0) if self.delays else 0.0)
        return {"orientation": torch.zeros(len(patches), k)}


def test_one_slow_moment_does_not_decide_a_throughput():
    # two calls of "a" fall on busy moments (0.2 s); its other calls take no time
    slow_once = _Loaded("a", [0.0, 0.2, 0.0, 0.2])
    steady = _Loaded("b", [0.02] * 10)
    patches = {m: torch.zeros(100, 1, 8, 8) for m in "ab"}
    speed = interleaved_throughput([slow_once, steady], patches)
    # a single timing (or a median of three) would have ranked "a" 10x slower than "b"
    assert speed["a"] > speed["b"] > 0


def test_the_detector_and_descriptor_timings_are_interleaved(monkeypatch):
    from ssfeat.evaluation import descriptor, detector, keypoints, matching, warp

    seen = []

    def fake(fns, repeats=5, reduce="median", warmup=True):
        seen.append(sorted(fns))
        return {k: 1.0 for k in fns}

    for mod in (descriptor, detector, keypoints, matching, warp):
        monkeypatch.setattr(mod, "interleaved_seconds", fake)

    class Det:
        config = type("C", (), {"max_keypoints": 10})()

        def __call__(self, image):
            return None

    img = torch.rand(64, 64).numpy()
    assert detector.time_detector(Det(), img) == {"ssfeat_detector": 1.0, "opencv_sift_detect": 1.0}
    assert seen == [["opencv_sift_detect", "ssfeat_detector"]]
