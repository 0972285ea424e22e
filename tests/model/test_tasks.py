import pytest

from vast.model.tasks import Task, condition_of, modalities_needed, parse_task, text_key


def test_parse_upstream_grammar():
    tasks = parse_task("ret%tvas%tvs%tv%ta_cap%tvas%tvs%tv%ta")
    assert tasks == [Task("ret", ("tvas", "tvs", "tv", "ta")), Task("cap", ("tvas", "tvs", "tv", "ta"))]
    assert [str(t) for t in parse_task("ret%tvas%tv_cap%tvas")] == ["ret%tvas%tv", "cap%tvas"]
    assert modalities_needed(parse_task("cap%tv_qa%ta")) == {"v", "a"}


@pytest.mark.parametrize("bad", ["gen%tv", "ret", "ret%vt", "ret%tx", "ret%tas", "ret%tvv"])
def test_bad_task_strings_raise(bad):
    with pytest.raises(ValueError):
        parse_task(bad)


def test_condition_order_is_canonical():
    assert condition_of("tsav") == "vas"
    assert condition_of("tav") == "va"


def test_vast27m_grouping_picks_the_matching_caption():
    keys = {"vision_caption", "audio_caption", "omni_caption", "text"}
    assert text_key("tv", keys) == "vision_caption"
    assert text_key("ta", keys) == "audio_caption"
    assert text_key("tvs", keys) == "omni_caption"
    assert text_key("tvas", keys) == "omni_caption"
    assert text_key("tva", keys) == "omni_caption"
    assert text_key("ts", keys) == "text"  # no VAST-27M caption for a subtitle alone: the generic text
    assert text_key("tv", {"text"}) == "text"
    with pytest.raises(KeyError):
        text_key("ta", {"vision_caption"})
