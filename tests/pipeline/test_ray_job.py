"""`ray job submit ... -- vast-pipeline ingest` against a `ray start --head` cluster on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.pipeline.test_ingest import assert_exactly_once, lines_of, tar_samples

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_on_a_loopback_cluster(tmp_path, media_root):
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{media_root / 'tone.mp4'} 1 6\n{media_root / 'speech.mp4'} 1 6\n")
    output = tmp_path / "out"
    gcs, dash = _free_port(), _free_port()
    # a short temp dir of its own: Ray's unix socket paths must stay under ~107 characters
    temp_dir = tempfile.mkdtemp(prefix="vray", dir="/tmp")
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # --block keeps `ray start` in the foreground owning the cluster, so the test stops exactly
    # this cluster (`ray stop` would stop every Ray on the machine, other test runs' too)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--object-store-memory=300000000", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # ports of our own: another Ray on this machine (an earlier test's) holds the defaults
         *(f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "metrics-export-port", "runtime-env-agent-port"))],
        env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                  str(BIN / "vast-pipeline"), "ingest", str(ids), "--config", "tiny", "--output", str(output),
                  "--no-progress"]
        deadline = time.time() + 240
        while True:  # the dashboard and its job agent take a while to accept jobs on a busy machine
            job = subprocess.run(submit, env={**env, "RAY_AUTH_MODE": "token"}, timeout=300,
                                 capture_output=True, text=True)
            started = "submitted successfully" in job.stdout + job.stderr
            if job.returncode == 0 or started or time.time() > deadline:
                break
            time.sleep(2)
        head_log = (tmp_path / "head.log").read_text()[-2000:]
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:] + head_log
        assert "succeeded" in job.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert_exactly_once(str(output), lines_of(ids))
    assert len(tar_samples(str(output))) == 2
