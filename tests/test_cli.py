import subprocess
import sys
from pathlib import Path

import pytest

from vast.cli import main, parse_overrides

BIN = Path(sys.executable).parent


def test_console_script_help_lists_commands_and_config_keys():
    out = subprocess.run([str(BIN / "vast-pipeline"), "--help"], capture_output=True, text=True, check=True)
    for cmd in ("ingest", "status", "retry", "sample"):
        assert cmd in out.stdout
    out = subprocess.run([str(BIN / "vast-pipeline"), "ingest", "--help"], capture_output=True, text=True,
                         check=True)
    assert "--shards.samples_per_shard" in out.stdout and "--stages.media.options.max_height" in out.stdout


def test_overrides_parse_both_spellings():
    assert parse_overrides(["--a.b", "1", "--c=x y"]) == {"a.b": "1", "c": "x y"}


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("dQw4w9WgXcQ\n")
    assert main(["ingest", str(ids), "--output", str(tmp_path / "o"), "--shards.nope", "1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o")]) == 3
    assert "input file not found" in capsys.readouterr().err


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_every_refusal_is_one_line_with_its_own_exit_code(tmp_path, capsys):
    from vast.shards.store import OutputStore

    ids = tmp_path / "ids.txt"
    ids.write_text("dQw4w9WgXcQ\n")
    out = str(tmp_path / "out")
    codes = {}
    # status on what is not an output says so and creates nothing
    codes["not_output"] = main(["status", str(tmp_path / "missing")])
    assert "not a vast-pipeline output" in one_line(capsys) and not (tmp_path / "missing").exists()
    (tmp_path / "plain").mkdir()
    assert main(["status", str(tmp_path / "plain")]) == codes["not_output"]
    assert "no ledger/ folder" in one_line(capsys) and list((tmp_path / "plain").iterdir()) == []
    # retry checks its classes before anything else (the output is not even looked at)
    codes["usage"] = main(["retry", str(tmp_path / "missing"), "--class", "netwrok"])
    err = one_line(capsys)
    assert "unknown error class 'netwrok'" in err and "network" in err
    assert main(["retry", out, "--class", "invalid_input"]) == codes["usage"]
    assert "not retryable" in one_line(capsys)
    assert main(["retry", str(tmp_path / "missing"), "--class", "network"]) == codes["not_output"]
    one_line(capsys)
    assert main(["ingest", str(ids), "--config", "no-such-preset", "--output", out]) == codes["usage"]
    assert "presets:" in one_line(capsys)
    # input files
    codes["input"] = main(["ingest", str(tmp_path / "nope.txt"), "--output", out])
    one_line(capsys)
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(bytes(range(256)) * 16)
    assert main(["ingest", str(garbage), "--config", "tiny", "--output", out]) == codes["input"]
    assert "is not a text file" in one_line(capsys)
    # an output that cannot be written: a file in the way
    codes["not_writable"] = main(["ingest", str(ids), "--config", "tiny", "--output", str(ids / "out")])
    assert "cannot write to" in one_line(capsys)
    # another run holds the output
    lock = OutputStore(out).lock()
    try:
        codes["locked"] = main(["ingest", str(ids), "--config", "tiny", "--output", out])
        assert "another vast-pipeline run holds" in one_line(capsys)
    finally:
        lock.close()
    assert codes == {"not_output": 4, "usage": 2, "input": 3, "not_writable": 5, "locked": 6}


def test_sample_writes_media_and_an_ids_file(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "s"), "--videos", "2"]) == 0
    ids = Path(capsys.readouterr().out.strip())
    lines = [ln for ln in ids.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 3 and all((tmp_path / "s" / "media").glob("*.mp4"))
    assert lines[1].startswith("file://")


def test_a_read_only_output_is_refused_in_one_line(tmp_path, capsys):
    """A read-only file system (a tmpfs mounted ``ro``; needs the right to mount, else skipped)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        ids = tmp_path / "ids.txt"
        ids.write_text("dQw4w9WgXcQ\n")
        assert main(["ingest", str(ids), "--config", "tiny", "--output", str(ro / "out")]) == 5
        assert "Read-only file system" in one_line(capsys)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
