"""Clip planning (pure) and ffmpeg scene detection on generated videos with real cuts."""

from __future__ import annotations

import random

import pytest

from tests.mediagen import make_corrupt, make_video
from vast.pipeline.scenes import SceneDetectionError, detect_cuts, plan_clips


def test_plan_no_cuts_one_clip():
    assert plan_clips(12.0, [], 5, 30) == [(0.0, 12.0)]


def test_plan_short_video_stays_whole():
    assert plan_clips(3.2, [1.0, 2.0], 5, 30) == [(0.0, 3.2)]


def test_plan_merges_short_pieces_into_shorter_neighbour():
    # pieces 2, 8, 2, 8: the first 2 can only go right; the second 2 joins the 8 after it (8 < 10)
    assert plan_clips(20.0, [2.0, 10.0, 12.0], 5, 30) == [(0.0, 10.0), (10.0, 20.0)]


def test_plan_splits_long_pieces_evenly():
    assert plan_clips(70.0, [], 5, 30) == [(0.0, 23.333), (23.333, 46.667), (46.667, 70.0)]
    # a long scene between two cuts is split on its own, the cuts stay boundaries
    assert plan_clips(80.0, [10.0, 75.0], 5, 30) == [
        (0.0, 10.0), (10.0, 31.667), (31.667, 53.333), (53.333, 75.0), (75.0, 80.0)]


def test_plan_ignores_cuts_outside_and_rounds_to_ms():
    clips = plan_clips(10.00049, [-1.0, 0.0, 5.00011, 10.0, 12.0], 2, 30)
    assert clips == [(0.0, 5.0), (5.0, 10.0)]


def test_plan_rejects_max_below_twice_min():
    with pytest.raises(ValueError, match="twice"):
        plan_clips(100.0, [], 20, 30)


def test_plan_random_inputs_fit_bounds_and_are_deterministic():
    rng = random.Random(7)
    for _ in range(300):
        duration = rng.uniform(5, 400)
        cuts = [rng.uniform(0, duration) for _ in range(rng.randint(0, 40))]
        clips = plan_clips(duration, cuts, 5, 30)
        assert clips == plan_clips(duration, list(reversed(cuts)) + cuts[:3], 5, 30)
        assert clips[0][0] == 0.0 and clips[-1][1] == round(duration, 3)
        for (_, b), (c, _) in zip(clips, clips[1:], strict=False):
            assert b == c
        for a, b in clips:
            assert 5 - 1e-3 <= b - a <= 30 + 1e-3, (duration, cuts, clips)
        bounds = {round(c, 3) for c in cuts}
        # a split part is longer than max/2, so a shorter clip lies between two cuts (or the ends)
        for a, b in clips:
            if b - a < 30 / 2 - 1e-3:
                assert a in bounds | {0.0} and b in bounds | {round(duration, 3)}


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("scenes") / "cuts.mp4", seconds=12, audio=None,
                      size="160x120", scene_every=3)


def test_detect_cuts_finds_the_scene_changes(scene_video):
    cuts = detect_cuts(scene_video, 0.3)
    assert len(cuts) == 3, cuts
    for cut, expected in zip(cuts, [3.0, 6.0, 9.0], strict=True):
        assert abs(cut - expected) <= 0.25, cuts
    assert detect_cuts(scene_video, 0.3) == cuts


def test_detect_cuts_none_in_one_shot(tmp_path):
    video = make_video(tmp_path / "one.mp4", seconds=6, audio=None, size="160x120")
    assert detect_cuts(video, 0.3) == []


def test_detect_cuts_raises_with_ffmpeg_message(tmp_path):
    with pytest.raises(SceneDetectionError) as e:
        detect_cuts(make_corrupt(tmp_path / "bad.mp4"), 0.3)
    assert e.value.stderr
