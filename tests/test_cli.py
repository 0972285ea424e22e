import subprocess
import sys
from pathlib import Path

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
    assert main(["ingest", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o")]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_sample_writes_media_and_an_ids_file(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "s"), "--videos", "2"]) == 0
    ids = Path(capsys.readouterr().out.strip())
    lines = [ln for ln in ids.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 3 and all((tmp_path / "s" / "media").glob("*.mp4"))
    assert lines[1].startswith("file://")
