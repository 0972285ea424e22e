"""The LLM engines behind the fusion stage: one interface, three backends.

- ``transformers``: Hugging Face ``generate`` on a left-padded batch, in the actor (CPU or GPU).
- ``vllm``: vLLM's offline ``LLM`` engine in the actor; a whole batch goes in one ``generate`` call
  and vLLM schedules it with continuous batching over a paged KV cache (GPU). vLLM is imported
  only when this backend is chosen.
- ``openai-server``: any OpenAI-compatible server (``vllm serve``, SGLang, TGI, the llama.cpp
  server, Ollama, ``transformers serve``). The actor holds no model, only an HTTP client: at most
  ``concurrency`` requests in flight, each with a timeout, retried with jittered exponential backoff
  on HTTP 429, 5xx, refused or dropped connections and timeouts. A row fails (``rate_limited`` or
  ``network``, with the last error) only when its retries are spent; no row is ever dropped.

Every backend decodes with the same ``Sampling``: greedy unless ``do_sample``, then ``temperature``,
``top_p`` and ``seed``. ``generate(prompts)`` returns, per prompt, the generated text or a
``SampleError``. A prompt is the full text (``tokenizer``'s chat template or the plain layout already
applied), except for a server's ``chat`` API, where it is the chat messages and the server applies
the model's own template.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from vast.captioners.base import ModelStageConfig, pick_device, weights_checksum
from vast.config import ConfigError
from vast.pipeline.stage import SampleError

Prompt = str | list[dict[str, str]]  # full prompt text, or chat messages for a server's chat API


@dataclass(frozen=True)
class Sampling:
    """Decoding settings, applied the same way by every backend."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def record(self) -> dict[str, Any]:
        """The settings as provenance records them (temperature and top_p only when sampling)."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "seed": self.seed}
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out


@dataclass
class ServerOptions:
    """How the ``openai-server`` backend reaches its server (the other backends ignore these)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """The server's OpenAI API root; requests go to ``{base_url}/chat/completions`` or ``/completions``."""
    api_key_env: str | None = None
    """Name of the environment variable that holds the API key (sent as ``Authorization: Bearer``). The
    key itself is never in the config, provenance or logs; the variable must be set where the actors
    run. Unset: no key is sent."""
    api: str = "chat"
    """``chat``: ``/chat/completions``, the server applies the model's chat template (the prompt's
    ``response_prefix`` is not sent); ``completions``: ``/completions`` with the prompt's plain layout
    (the VAST-27M instruction exactly as Vicuna was given it)."""
    concurrency: int = 8
    """Requests in flight per actor, at most (the stage's ``batch_size`` should be a multiple)."""
    timeout_s: float = 120.0
    """Seconds a request may wait for the server (to connect, then for its answer) before it is retried."""
    retries: int = 6
    """Retries of one row after its first attempt, on HTTP 429, 5xx, connection errors and timeouts."""
    backoff_s: float = 1.0
    """Base of the backoff: retry k waits U(0, backoff_s·2^k) s (full jitter), or the server's Retry-After."""
    backoff_max_s: float = 30.0
    """Cap on one wait, in seconds."""

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise ConfigError(f"server.api must be 'chat' or 'completions', got {self.api!r}")
        if urllib.parse.urlsplit(self.base_url).password is not None:
            raise ConfigError("server.base_url must not carry credentials (they would land in config dumps "
                              "and logs): put the API key in the variable named by server.api_key_env")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ConfigError("server.concurrency must be >= 1, server.retries >= 0, server.timeout_s > 0")


class TransformersLLM:
    """Hugging Face ``generate`` on a left-padded batch."""

    name = "transformers"
    chat = False

    def __init__(self, model: str, sampling: Sampling, device: ModelStageConfig):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ImportError("fusion backend 'transformers' needs transformers: "
                              "pip install transformers") from e
        from vast.captioners.hub import resolve_model

        self.sampling = sampling
        self.device, dtype = pick_device(device)
        model = str(resolve_model(model))  # a hub id: its copy in the local cache (`models pull`)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # generation continues every prompt from its last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self._torch = torch
        self._weights = _local_weights(model)

    def generate(self, prompts: list[Prompt]) -> list[str | SampleError]:
        torch, s = self._torch, self.sampling
        templated = bool(self.tokenizer.chat_template)  # the chat template already adds BOS and friends
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not templated)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p} if s.do_sample \
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        torch.manual_seed(s.seed)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=s.max_new_tokens,  # (B, T_prompt + new)
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "library": _library("transformers"), "weights_sha256": self._weights}


class VLLMEngine:
    """vLLM's offline engine: the batch in one ``generate`` call (GPU)."""

    name = "vllm"
    chat = False

    def __init__(self, model: str, sampling: Sampling, device: ModelStageConfig):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ImportError("fusion backend 'vllm' needs the vllm package (pip install vllm, on a CUDA "
                              "machine); use backend 'transformers' or 'openai-server' where vllm is not "
                              "installed") from e
        from vast.captioners.hub import resolve_model

        model = str(resolve_model(model))  # a hub id: its copy in the local cache (`models pull`)
        dtype = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[device.dtype]
        self.llm = LLM(model=model, dtype=dtype, seed=sampling.seed,
                       gpu_memory_utilization=device.gpu_memory_fraction or 0.9)
        self.tokenizer = self.llm.get_tokenizer()
        self.params = SamplingParams(max_tokens=sampling.max_new_tokens, seed=sampling.seed,
                                     temperature=sampling.temperature if sampling.do_sample else 0.0,
                                     top_p=sampling.top_p if sampling.do_sample else 1.0)
        self._weights = _local_weights(model)

    def generate(self, prompts: list[Prompt]) -> list[str | SampleError]:
        # token ids made as TransformersLLM makes them (a chat template already holds BOS and friends), so
        # both backends decode exactly the same prompt tokens
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=not templated)["input_ids"]}
                  for p in prompts]
        return [o.outputs[0].text for o in self.llm.generate(inputs, self.params, use_tqdm=False)]

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "library": _library("vllm"), "weights_sha256": self._weights}


class _Transient(Exception):
    """A failed attempt worth retrying: ``error_class`` is what the row gets if the retries run out."""

    def __init__(self, error_class: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.error_class, self.message, self.retry_after = error_class, message, retry_after


class OpenAIServerLLM:
    """Any OpenAI-compatible server, ``concurrency`` requests at a time, each retried as configured."""

    name = "openai-server"
    tokenizer = None  # the completions API gets the template's plain layout; chat leaves it to the server

    def __init__(self, model: str, sampling: Sampling, server: ServerOptions,
                 sleep: Any = time.sleep, rng: random.Random | None = None):
        self.model, self.sampling, self.server = model, sampling, server
        self.chat = server.api == "chat"
        self._url = server.base_url.rstrip("/") + ("/chat/completions" if self.chat else "/completions")
        self._headers = {"Content-Type": "application/json"}
        if server.api_key_env:
            key = os.environ.get(server.api_key_env)
            if not key:
                raise ValueError(f"fusion server.api_key_env names {server.api_key_env}, which is not set in "
                                 "this worker's environment (set it on every node, or unset api_key_env)")
            self._headers["Authorization"] = f"Bearer {key}"
        self._pool = ThreadPoolExecutor(max_workers=server.concurrency, thread_name_prefix="fusion-http")
        self._sleep, self._rng = sleep, rng or random.Random()
        self._lock = threading.Lock()
        self.served_models: set[str] = set()
        """Model ids the server reported in its answers (recorded in provenance)."""
        self.generated_tokens = 0
        """Completion tokens the server reported (``usage``), summed over every answer."""

    def generate(self, prompts: list[Prompt]) -> list[str | SampleError]:
        return list(self._pool.map(self._complete, prompts))

    def provenance(self) -> dict[str, Any]:
        served = sorted(self.served_models)
        return {"backend": self.name, "api": self.server.api,
                "served_model": served[0] if len(served) == 1 else served or None}

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based): full jitter, capped."""
        return self._rng.uniform(0.0, min(self.server.backoff_max_s, self.server.backoff_s * 2.0 ** attempt))

    def _body(self, prompt: Prompt) -> bytes:
        s = self.sampling
        body: dict[str, Any] = {"model": self.model, "max_tokens": s.max_new_tokens, "seed": s.seed,
                                "temperature": s.temperature if s.do_sample else 0.0,
                                "top_p": s.top_p if s.do_sample else 1.0}
        body["messages" if self.chat else "prompt"] = prompt
        return json.dumps(body).encode()

    def _complete(self, prompt: Prompt) -> str | SampleError:
        body, attempts = self._body(prompt), self.server.retries + 1
        for attempt in range(attempts):
            try:
                return self._post(body)
            except SampleError as e:
                return e
            except _Transient as e:
                failure = SampleError(e.error_class, f"{e.message} (gave up after {attempts} attempts)")
                if attempt + 1 < attempts:
                    self._sleep(self.backoff(attempt) if e.retry_after is None
                                else min(e.retry_after, self.server.backoff_max_s))
        return failure

    def _post(self, body: bytes) -> str:
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.server.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                detail = e.read()[:500].decode(errors="replace").strip()
            except (OSError, HTTPException):  # the error body itself was cut off
                detail = ""
            message = f"HTTP {e.code} from {self._url}: {detail}"
            if e.code == 429 or e.code >= 500:
                raise _Transient("rate_limited" if e.code == 429 else "network", message,
                                 _retry_after(e.headers.get("Retry-After"))) from None
            raise SampleError("stage_error", message) from None  # a request the server will never take
        except (urllib.error.URLError, OSError, HTTPException) as e:  # refused, reset, timed out, cut off
            reason = getattr(e, "reason", None) or e
            raise _Transient("network", f"{type(reason).__name__} from {self._url}: {reason}") from None
        except ValueError as e:  # not JSON: a proxy's error page, a truncated body
            raise _Transient("network", f"unreadable answer from {self._url}: {e}") from None
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise SampleError("stage_error", f"answer without a completion from {self._url}: "
                                             f"{json.dumps(reply)[:300]}") from None
        with self._lock:
            if reply.get("model"):
                self.served_models.add(str(reply["model"]))
            self.generated_tokens += int((reply.get("usage") or {}).get("completion_tokens") or 0)
        return text or ""


LLM_BACKENDS = ("transformers", "vllm", "openai-server")


def load_llm(backend: str, model: str, sampling: Sampling, device: ModelStageConfig,
             server: ServerOptions) -> TransformersLLM | VLLMEngine | OpenAIServerLLM:
    """The named backend, ready to generate (a local model is loaded here, once per actor)."""
    if backend == "transformers":
        return TransformersLLM(model, sampling, device)
    if backend == "vllm":
        return VLLMEngine(model, sampling, device)
    if backend == "openai-server":
        return OpenAIServerLLM(model, sampling, server)
    raise ValueError(f"unknown fusion backend {backend!r}; use one of {', '.join(LLM_BACKENDS)}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare from inference servers; fall back to our own backoff
        return None


def _local_weights(model: str) -> str | None:
    return weights_checksum(str(Path(model).resolve())) if Path(model).exists() else None


def _library(package: str) -> str:
    return f"{package} {importlib.metadata.version(package)}"
