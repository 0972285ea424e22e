"""Scratch space: every temporary file of a run lives in one folder of that run, found again after a crash.

The stages' temporary folders (a fetch's download, the media stage's clip files, a chain's batch
folder, a private copy of the cookie jar) hold whole source copies: a run killed with ``kill -9``
must not leave them behind for good. So ``run_job`` gives each run one folder, handed to the stages
as their ``work_dir``, named after the output it writes and the run::

    OUT/.staging/vast-run-<output key>-<run id>/     a local output: beside the commits' staging
    <root>/vast-run-<output key>-<run id>/           a remote output (s3://...): root = the system
                                                     temp dir of each machine, or a stage's work_dir

A run removes the run folders of its output's earlier runs before it starts (the driver, on its
machine; for a local output the whole ``.staging`` goes, see ``OutputStore.clean_uncommitted``),
and each worker process removes them on its own machine the first time it enters the new run's
folder (``scratch_dir``); the run removes its own folder when it ends. One run per output at a
time (the output's lock) makes any other run folder of the same output stale.
``vast-pipeline status DIR --clean`` removes them too, on the machine it runs on.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

RUN_PREFIX = "vast-run-"
_RUN_NAME = re.compile(rf"^{RUN_PREFIX}([0-9a-f]{{12}})-([0-9a-f]+)$")
_entered: set[str] = set()  # run folders this process has entered (stale siblings removed once)


def output_key(store: Any) -> str:
    """12 hex digits naming an output (``OutputStore``) in its run folders' names."""
    where = os.path.realpath(store.root) if store.local else store.url
    return hashlib.sha1(where.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def scratch_root(store: Any, work_dir: str | None = None) -> str:
    """Where ``store``'s run folders go: ``work_dir`` when a stage names one, else ``OUT/.staging`` for a
    local output, else the system temp dir."""
    if work_dir:
        return work_dir
    return store.path(".staging") if store.local else tempfile.gettempdir()


def stale_runs(root: str, key: str, keep: str | None = None) -> list[str]:
    """The run folders under ``root`` of the output ``key`` other than ``keep``."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(os.path.join(root, n) for n in names
                  if (m := _RUN_NAME.match(n)) and m.group(1) == key and os.path.join(root, n) != keep)


def remove(paths: list[str]) -> list[tuple[str, int]]:
    """Remove ``paths`` (folders or files); returns (path, bytes it held) of each one removed."""
    removed = []
    for path in paths:
        size = _size(path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        if not os.path.lexists(path):
            removed.append((path, size))
    return removed


def begin_run(store: Any, work_dir: str | None = None) -> tuple[str, list[tuple[str, int]]]:
    """A new run folder for ``store``'s output (created), after removing its earlier runs' folders on
    this machine; returns (folder, what was removed)."""
    root, key = scratch_root(store, work_dir), output_key(store)
    removed = remove(stale_runs(root, key))
    folder = os.path.join(root, f"{RUN_PREFIX}{key}-{uuid.uuid4().hex[:12]}")
    os.makedirs(folder, exist_ok=True)
    _entered.add(folder)
    return folder, removed


def scratch_dir(work_dir: str | None) -> str | None:
    """``work_dir`` ready for temporary folders (None: the system temp dir, as ``tempfile`` has it).

    The first time a process enters a run folder, the stale run folders of the same output beside
    it are removed: on a machine the driver never ran on, this is what removes a killed run's files.
    """
    if work_dir is None:
        return None
    os.makedirs(work_dir, exist_ok=True)
    if work_dir not in _entered:
        _entered.add(work_dir)
        m = _RUN_NAME.match(os.path.basename(work_dir.rstrip("/")))
        if m:
            remove(stale_runs(os.path.dirname(work_dir.rstrip("/")), m.group(1), keep=work_dir.rstrip("/")))
    return work_dir


def _size(path: str) -> int:
    """Bytes in a file or under a folder (0 for what vanished meanwhile)."""
    if not os.path.isdir(path) or os.path.islink(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(Path(dirpath, name)).st_size
            except OSError:
                pass
    return total


def configured_work_dir(stages: dict[str, Any]) -> str | None:
    """The ``work_dir`` option the config's stages name (the first one set), where run folders then go."""
    return next((spec.options["work_dir"] for spec in stages.values() if spec.options.get("work_dir")), None)


def clean_output(store: Any, work_dir: str | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """Remove what interrupted runs of ``store``'s output left on this machine: its run folders (and
    anything else staged in a local output's ``.staging``), then the files of commits that never
    completed. The caller holds the output's lock. Returns ((path, bytes) removed, commit files removed)."""
    key = output_key(store)
    found: list[str] = []
    if store.local:
        staging = store.path(".staging")
        names = os.listdir(staging) if os.path.isdir(staging) else []
        found += sorted(os.path.join(staging, n) for n in names)
    for root in dict.fromkeys(r for r in (work_dir, tempfile.gettempdir()) if r):
        found += [p for p in stale_runs(root, key) if p not in found]
    removed = remove(found)
    return removed, store.clean_uncommitted()
