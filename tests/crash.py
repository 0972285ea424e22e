"""Crash a whole run as a machine would lose it: ``kill -9`` of every process of its session.

A run started with ``start_new_session=True`` leads its own session; the embedded Ray's processes
(GCS, raylet, workers) stay in that session but put themselves in process groups of their own, so
``killpg`` of the driver's group alone would leave workers finishing their task for a moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil


def kill_session(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGKILL every process in ``proc``'s session (``proc`` leads it) and wait until none is left;
    returns how many were killed."""
    sid = proc.pid
    killed = 0
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        members = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                    members.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        if not members:
            proc.wait()
            return killed
        for p in members:
            try:
                p.send_signal(signal.SIGKILL)
                killed += 1
            except psutil.Error:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"processes of session {sid} still alive after {timeout_s:g} s")
