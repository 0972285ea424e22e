"""The LLM backends' contracts that need no server: config checks, unreachable servers, the API key,
and vLLM against transformers where vLLM can run."""

from __future__ import annotations

import importlib.util
import random

import pytest

from tests.llmserver import free_port
from vast.captioners.fusion import FusionConfig, OmniCaptionFuser
from vast.captioners.llm import OpenAIServerLLM, Sampling, ServerOptions
from vast.config import ConfigError, from_dict
from vast.pipeline.config import load_config
from vast.pipeline.stage import batch_of, rows_of

OK = {"status": "ok", "error_class": "", "message": "", "stage": ""}  # a row as the graph hands it
ROWS = [{**OK, "key": f"k{i}", "vision_cap": ["a bird sings on a branch"],
         "audio_cap": ["chirping"], "subtitle": ""} for i in range(5)]


def test_config_refuses_unknown_backends_and_bad_server_settings():
    with pytest.raises(ConfigError, match="openai-server"):
        FusionConfig(backend="openai")
    with pytest.raises(ConfigError, match="server.api"):
        from_dict(FusionConfig, {"server": {"api": "responses"}})
    with pytest.raises(ConfigError, match="concurrency"):
        from_dict(FusionConfig, {"server": {"concurrency": 0}})
    cfg = load_config("demo", {"stages.fusion.options.backend": "openai-server",
                               "stages.fusion.options.server.base_url": "http://10.0.0.5:8000/v1",
                               "stages.fusion.options.server.concurrency": 16})
    assert cfg.stages["fusion"].options["server"]["concurrency"] == 16  # validated as FusionConfig


def test_an_unreachable_server_fails_every_row_as_network_after_the_retries():
    port = free_port()  # nothing listens there
    waits: list[float] = []
    stage = OmniCaptionFuser(FusionConfig(model="m", backend="openai-server", server=ServerOptions(
        base_url=f"http://127.0.0.1:{port}/v1", retries=3, backoff_s=0.5, backoff_max_s=1.0)))
    stage.backend._sleep = waits.append  # record the backoff instead of sleeping it
    out = rows_of(stage(batch_of(ROWS)))
    assert [(r["status"], r["error_class"]) for r in out] == [("failed", "network")] * len(ROWS)
    assert all(f"127.0.0.1:{port}/v1/chat/completions" in r["message"] and "after 4 attempts" in r["message"]
               for r in out)
    assert len(waits) == 3 * len(ROWS) and all(0.0 <= w <= 1.0 for w in waits)


def test_backoff_is_full_jitter_exponential_and_capped():
    llm = OpenAIServerLLM("m", Sampling(8), ServerOptions(backoff_s=1.0, backoff_max_s=5.0),
                          rng=random.Random(0))
    draws = [[llm.backoff(k) for _ in range(200)] for k in range(5)]
    assert all(0.0 <= d <= min(5.0, 2.0 ** k) for k, ds in enumerate(draws) for d in ds)
    assert max(draws[1]) > 1.0 and max(draws[4]) > 4.0  # the range grows, up to the cap


def test_a_missing_api_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("VAST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="VAST_NO_SUCH_KEY.*not set"):
        OpenAIServerLLM("m", Sampling(8), ServerOptions(api_key_env="VAST_NO_SUCH_KEY"))


def test_credentials_belong_in_the_key_variable_not_the_url():
    with pytest.raises(ConfigError, match="api_key_env"):
        ServerOptions(base_url="http://user:secret@127.0.0.1:8000/v1")


VLLM_SKIP = "vLLM is not installed (it needs a CUDA GPU: pip install vllm)" \
    if importlib.util.find_spec("vllm") is None else None


@pytest.mark.skipif(VLLM_SKIP is not None, reason=VLLM_SKIP or "")
def test_vllm_backend_generates_what_transformers_generates(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but this machine has no CUDA GPU")
    from vast.captioners.tiny_lm import write_tiny_lm

    lm = str(write_tiny_lm(tmp_path))
    common = {"model": lm, "max_new_tokens": 12, "dtype": "fp32", "device": "cuda"}
    vllm = OmniCaptionFuser(FusionConfig(backend="vllm", gpu_memory_fraction=0.3, **common))
    hf = OmniCaptionFuser(FusionConfig(backend="transformers", **common))
    prompts = hf.prompts(ROWS[:1] + [{"vision_cap": ["cars at night"], "audio_cap": [], "subtitle": "hi"}])
    assert vllm.prompts(ROWS[:1]) == hf.prompts(ROWS[:1])  # the same chat template, the same prompt text
    assert vllm.backend.generate(prompts) == hf.backend.generate(prompts)  # greedy: the same tokens
    record = vllm.provenance()
    assert record["backend"] == "vllm" and record["library"].startswith("vllm ")


@pytest.mark.skipif(VLLM_SKIP is None, reason="vLLM is installed here: nothing to refuse")
def test_vllm_backend_without_vllm_is_refused_before_any_actor(tmp_path):
    from vast.captioners.tiny_lm import write_tiny_lm

    lm = write_tiny_lm(tmp_path / "lm")
    with pytest.raises(ConfigError, match="vllm is not installed"):
        OmniCaptionFuser.preflight(FusionConfig(backend="vllm", model=str(lm)))
