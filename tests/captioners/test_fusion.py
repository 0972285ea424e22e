"""OmniCaptionFuser on a tiny random causal LM, prompt templates, and caption cleaning."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from vast.captioners.base import input_digest, weights_checksum
from vast.captioners.fusion import FusionConfig, OmniCaptionFuser, clean_caption, load_prompt
from vast.pipeline.stage import batch_of, rows_of

# The VAST paper's fusion prompt (VAST_FACTS.md), with its placeholders filled in order.
VAST27M_WORDING = (
    "Human: About one video, here are 3 vision captions: {}, 3 audio captions: {}, "
    "and one speech subtitle: {}. "
    "You need to understand and encode them into 1 sentence. Vision and audio captions maybe redundant, "
    "summarize them before encode with speech subtitle. Do not simply concatenate them together. "
    'The weights of video/audio/speech are equaled.\nAssistant: The sentence is "'
)

FULL = {"vision_cap": ["a man cooks pasta", "a kitchen scene", "someone stirs a pot", "a fourth one"],
        "audio_cap": ["water boils", "a man talks", "a spoon clinks"], "subtitle": "now add the salt"}
VISION_ONLY = {"vision_cap": ["a dog runs in a field"], "audio_cap": [], "subtitle": ""}
STREET = {"vision_cap": ["cars at night", "a busy street"], "audio_cap": ["horns honk", "engine noise"],
          "subtitle": "watch out for the bus over there, it is coming around the corner right now"}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vast.captioners.tiny_lm import write_tiny_lm

    return write_tiny_lm(tmp_path_factory.mktemp("fusion_lm"))


@pytest.fixture(scope="module")
def fuser(lm_dir: Path) -> OmniCaptionFuser:
    return OmniCaptionFuser(FusionConfig(model=str(lm_dir), prompt="vast27m-v1", max_new_tokens=12))


def test_vast27m_template_renders_the_paper_wording_exactly():
    t = load_prompt("vast27m-v1")
    vision, audio = FULL["vision_cap"][:3], FULL["audio_cap"]
    expected = VAST27M_WORDING.format(", ".join(f'"{c}"' for c in vision), ", ".join(f'"{c}"' for c in audio),
                                      FULL["subtitle"])
    assert t.plain_text(vision, audio, FULL["subtitle"]) == expected
    assert t.response_prefix == 'The sentence is "'
    assert (t.name, t.version) == ("vast27m-v1", 1)


def test_templates_say_which_inputs_are_absent():
    vast = load_prompt("vast27m-v1").user_message(["a dog runs"], [], "")
    assert ('here are 1 vision captions: "a dog runs", 0 audio captions: none, '
            "and one speech subtitle: none.") in vast
    omni = load_prompt("omni-v1")
    text = omni.user_message(["a dog runs"], [], "")
    assert "- a dog runs" in text and text.count("(not available)") == 2
    assert omni.system and omni.messages([], [], "")[0]["role"] == "system"


def test_prompt_from_yaml_path_and_unknown_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: 3\ntemplate: 'V={vision} A={audio} S={subtitle}'\n"
                    "item: '<{}>'\nseparator: ''\n")
    t = load_prompt(str(path))
    assert (t.name, t.version) == ("mine", 3)
    assert t.user_message(["x", "y"], [], "hi") == "V=<x><y> A=none S=hi"
    with pytest.raises(ValueError, match="vast27m-v1"):
        load_prompt("no-such-prompt")


def test_chat_template_prompt_ends_with_the_response_prefix(fuser):
    prompt = fuser.prompts([FULL])[0]
    user = load_prompt("vast27m-v1").user_message(FULL["vision_cap"][:3], FULL["audio_cap"], FULL["subtitle"])
    assert prompt == f'<|user|>{user}<|end|>\n<|assistant|>The sentence is "'
    assert "a fourth one" not in prompt  # at most 3 captions per modality


@pytest.mark.parametrize("prompt", ["vast27m-v1", "omni-v1"])
def test_batched_generation_equals_one_by_one(lm_dir, prompt):
    stage = OmniCaptionFuser(FusionConfig(model=str(lm_dir), prompt=prompt, max_new_tokens=12))
    rows = [FULL, VISION_ONLY, STREET]
    prompts = stage.prompts(rows)
    enc = stage.backend.tokenizer(prompts, padding=True, add_special_tokens=False)
    pad = stage.backend.tokenizer.pad_token_id
    assert enc["input_ids"][1][0] == pad and enc["input_ids"][1][-1] != pad  # the short prompt is LEFT-padded
    batched = stage.backend.generate(prompts)
    single = [stage.backend.generate([p])[0] for p in prompts]
    assert batched == single
    assert all(batched)
    assert stage.annotate(rows) == [stage.annotate([r])[0] for r in rows]


def test_tokenizer_without_chat_template_gets_the_plain_layout(lm_dir):
    stage = OmniCaptionFuser(FusionConfig(model=str(lm_dir), max_new_tokens=8))
    stage.backend.tokenizer.chat_template = None
    prompts = stage.prompts([FULL, VISION_ONLY])
    assert prompts[0].startswith("Human: About one video")
    assert prompts[0].endswith('\nAssistant: The sentence is "')
    assert stage.backend.generate(prompts) == [stage.backend.generate([p])[0] for p in prompts]


def test_right_padding_would_break_batching(lm_dir):
    # the control for the test above: with the pad on the wrong side the short prompt's output changes
    stage = OmniCaptionFuser(FusionConfig(model=str(lm_dir), max_new_tokens=12))
    wrong = copy.copy(stage.backend)
    wrong.tokenizer = copy.deepcopy(stage.backend.tokenizer)
    wrong.tokenizer.padding_side = "right"
    prompts = stage.prompts([FULL, VISION_ONLY])
    assert wrong.generate(prompts)[1] != stage.backend.generate([prompts[1]])[0]


def test_stage_fuses_clips_with_missing_inputs_and_records_provenance(fuser, lm_dir):
    rows = [{"key": "a", "status": "ok", "error_class": "", "message": "", "stage": "", **FULL},
            {"key": "b", "status": "ok", "error_class": "", "message": "", "stage": "", **VISION_ONLY},
            {"key": "c", "status": "ok", "error_class": "", "message": "", "stage": "",
             "vision_cap": None, "audio_cap": None, "subtitle": None}]
    out = rows_of(fuser(batch_of(rows)))
    assert [r["status"] for r in out] == ["ok", "ok", "ok"]
    assert all(isinstance(r["vast_cap"], str) for r in out)
    assert any(r["vast_cap"] for r in out)
    assert "0 audio captions: none" in fuser.prompts([rows[1]])[0]
    record = json.loads(out[1]["provenance"])["vast_cap"]
    assert record["model"] == str(lm_dir)
    assert record["weights_sha256"] == weights_checksum(str(lm_dir.resolve()))
    assert record["prompt"]["name"] == "vast27m-v1" and record["prompt"]["version"] == 1
    assert record["decoding"] == {"max_new_tokens": 12, "do_sample": False, "seed": 0}


def test_nothing_to_fuse_is_empty_with_a_reason_and_never_reaches_the_llm(fuser, monkeypatch):
    prompted: list[str] = []
    generate = fuser.backend.generate
    monkeypatch.setattr(fuser.backend, "generate", lambda ps: prompted.extend(ps) or generate(ps))
    nothing = [{"vision_cap": [], "audio_cap": [], "subtitle": ""},  # a tone file: no speech, no captions
               {"vision_cap": ["  "], "audio_cap": None, "subtitle": float("nan")}]  # blank or missing
    rows = [{"key": f"k{i}", "status": "ok", "error_class": "", "message": "", "stage": "", **r}
            for i, r in enumerate([*nothing, VISION_ONLY])]
    out = rows_of(fuser(batch_of(rows)))
    assert [r["vast_cap"] for r in out[:2]] == ["", ""] and out[2]["vast_cap"]
    assert len(prompted) == 1 and "a dog runs in a field" in prompted[0]
    for r in out[:2]:
        record = json.loads(r["provenance"])["vast_cap"]
        assert record["empty_reason"] == "nothing to fuse: no vision caption, audio caption or subtitle"
    record = json.loads(out[2]["provenance"])["vast_cap"]
    assert record["empty_reason"] == ""
    inputs = ("vision_cap", "audio_cap", "subtitle")
    assert record["inputs"] == {k: input_digest(VISION_ONLY[k]) for k in inputs}


def test_sampling_is_seeded(lm_dir):
    config = FusionConfig(model=str(lm_dir), max_new_tokens=12, do_sample=True, temperature=1.5, seed=7)
    stage = OmniCaptionFuser(config)
    prompts = stage.prompts([FULL, STREET])
    greedy = OmniCaptionFuser(FusionConfig(model=str(lm_dir), max_new_tokens=12)).backend.generate(prompts)
    assert stage.backend.generate(prompts) == stage.backend.generate(prompts) != greedy
    assert stage.provenance()["decoding"] == {"max_new_tokens": 12, "do_sample": True, "seed": 7,
                                              "temperature": 1.5, "top_p": 0.9}


def test_vllm_backend_says_what_is_missing(lm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vllm
    with pytest.raises(ImportError, match="needs the vllm package"):
        OmniCaptionFuser(FusionConfig(model=str(lm_dir), backend="vllm"))


@pytest.mark.parametrize("raw,expected", [
    ('A man cooks pasta in a kitchen." He seems happy.', "A man cooks pasta in a kitchen."),
    ('The sentence is "A dog barks at a ball."', "A dog barks at a ball."),
    ('"A woman sings on a stage."\nHuman: another video', "A woman sings on a stage."),
    ("Cars honk on a busy street. Then it rains. Assistant: ok", "Cars honk on a busy street."),
    ("  a child plays the piano\x11\ufffd while laughing  ", "a child plays the piano while laughing"),
    ("Sentence: 'A cat sleeps.'", "A cat sleeps."),
])
def test_clean_caption(raw, expected):
    assert clean_caption(raw, response_prefix='The sentence is "') == expected


def test_clean_caption_drops_an_echoed_prefix_and_limits_length():
    prefix = 'The sentence is "'
    assert clean_caption(prefix + 'A bird sings."', prefix) == "A bird sings."
    long = " ".join(f"word{i}," for i in range(100))
    cut = clean_caption(long, "", max_words=10)
    assert cut == " ".join(f"word{i}," for i in range(10)).rstrip(",")
    assert len(cut.split()) == 10
    assert clean_caption('He says "hello" to the dog.', "") == 'He says "hello" to the dog.'


def test_tiny_lm_is_deterministic(lm_dir, tmp_path):
    from vast.captioners.tiny_lm import write_tiny_lm

    assert weights_checksum(str(write_tiny_lm(tmp_path))) == weights_checksum(str(lm_dir))
