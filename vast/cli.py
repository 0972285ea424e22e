"""The ``vast-pipeline`` command line, generated from typed functions (litgpt's ``CLI`` idea).

Each command is a plain function; its signature gives the flags, its docstring's ``Args:`` the
help. Commands that take ``overrides`` also accept any ``--dotted.config.key VALUE`` after the
named flags, applied on top of the chosen preset (``--config demo`` or a YAML file).
"""

from __future__ import annotations

import argparse
import errno
import inspect
import re
import sys
import typing
from collections.abc import Callable
from typing import Any

from vast.config import ConfigError, describe


def ingest(inputs: list[str], config: str = "demo", output: str | None = None, address: str | None = None,
           strict: bool = False, no_progress: bool = False, report: bool = False,
           overrides: dict[str, str] | None = None) -> int:
    """Download, cut and shard the clips named by input files; rerun the same command to resume.

    Args:
        inputs: input files: ids.txt (SOURCE [START END] per line), .csv, .jsonl or .parquet
        config: preset name (demo, vast27m, ...) or a YAML file
        output: output directory or URL (overrides the config's `output`)
        address: Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)
        strict: refuse the run before any work if an input line is malformed
        no_progress: no live progress bar
        report: write OUTPUT/report/index.html at the end (see `vast-pipeline report`) and print its path
    """
    from vast.pipeline.config import load_config
    from vast.pipeline.ingest import ingest as run_ingest
    from vast.shards.summary import format_summary

    cfg = load_config(config, _with(overrides, output=output, **{"ray.address": address}))
    if strict:
        cfg.strict = True
    if no_progress:
        cfg.progress = False
    summary = run_ingest(inputs, cfg)
    print(format_summary(summary))
    if report:
        _print_report(cfg.output)
    return 0


def status(output: str, examples: int = 2, clean: bool = False) -> int:
    """Show progress, failures by class, and the requests still pending with how to finish them.

    Args:
        output: the output directory or URL of an ingest
        examples: example messages shown per failure class (and pending requests shown)
        clean: first remove what interrupted runs left (temporary folders on this machine, files of
            uncommitted commits) and say what; refused while a run holds the output
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from vast.shards.ledger import pending_requests, read_ledger
    from vast.shards.store import OutputStore
    from vast.shards.summary import format_summary, summarize

    store = OutputStore(output, create=False)
    if clean:
        _clean(store)
    print(format_summary(summarize(store)))
    example = _example_subtitle(store)
    if example:
        print(f"subtitle {example[0]}: {example[1]!r}")
    ledger = read_ledger(store)
    failed = ledger.filter(pc.equal(ledger["status"], "failed"))
    for cls in sorted(set(failed["error_class"].to_pylist())):
        rows = failed.filter(pc.equal(failed["error_class"], cls)).slice(0, examples).to_pylist()
        for r in rows:
            print(f"  {cls:<14} {r['key'] or r['input']}: {r['message'][:160]}")
    if not store.exists("plan.parquet"):
        return 0
    with store.open("plan.parquet") as f:
        planned = pq.read_table(f, columns=["request", "input"])
    pending = pending_requests(planned, ledger)
    if pending.num_rows == 0:
        return 0
    print(f"pending  {pending.num_rows} request(s) not settled yet, e.g.:")
    for r in pending.slice(0, max(examples, 1)).to_pylist():
        got = "not started" if r["clips"] is None else f"{r['clips']} of {r['n_clips']} clips settled"
        why = f"; its own failure: {r['error_class']}" if r["error_class"] else ""
        print(f"  {r['input']}  {r['request']} ({got}{why})")
    classes = sorted({c for c in pending["error_class"].to_pylist() if c})
    if classes:
        flags = " ".join(f"--class {c}" for c in classes)
        print(f"  finish the interrupted retries: vast-pipeline retry {output} {flags}")
    if pending["error_class"].null_count:  # some have no failure of their own: ingest finishes them
        files = sorted({i.rsplit(":", 1)[0] for i in planned["input"].to_pylist() if i})
        print(f"  finish the rest: rerun the same `vast-pipeline ingest {' '.join(files[:3])}"
              f"{' ...' if len(files) > 3 else ''} --output {output}` command")
    return 0


def _clean(store: Any) -> None:
    """``status --clean``: remove the output's stale run folders and uncommitted commits' files (locked)."""
    from vast.pipeline.ingest import saved_config
    from vast.pipeline.scratch import clean_output, configured_work_dir

    # run folders go to a stage's work_dir when the run's config names one
    work_dir = configured_work_dir(saved_config(store.url).stages) if store.exists("config.yaml") else None
    lock = store.lock()
    try:
        removed, uncommitted = clean_output(store, work_dir)
    finally:
        lock.close()
    for path, size in removed:
        print(f"removed  {path} ({size / 2**20:.1f} MiB)")
    for name in uncommitted:
        print(f"removed  {store.path(name)} (a file of a commit that never completed)")
    total = sum(size for _, size in removed) / 2**20
    print(f"cleaned  {len(removed) + len(uncommitted)} item(s), {total:.1f} MiB" if removed or uncommitted
          else "cleaned  nothing left behind by interrupted runs")


def _example_subtitle(store: Any) -> tuple[str, str] | None:
    """The first committed sample with a subtitle (key, text): one manifest read at a time."""
    import pyarrow.parquet as pq

    from vast.shards.store import COMMIT_RE

    committed = set(store.committed_numbers())
    for name in store.ls():
        m = COMMIT_RE.search(name)
        if name.endswith(".parquet") and m and int(m.group(1)) in committed:
            with store.open(name) as f:
                table = pq.read_table(f)
            if "subtitle" in table.column_names:
                for key, text in zip(table["key"].to_pylist(), table["subtitle"].to_pylist(), strict=True):
                    if text:
                        return key, text
    return None


def retry(output: str, classes: list[str], overrides: dict[str, str] | None = None) -> int:
    """Re-run only the clips of OUTPUT that failed with the given error classes.

    Args:
        output: the output directory or URL of an ingest
        classes: error classes to re-run (e.g. --class rate_limited --class network)
    """
    from vast.config import apply_override, from_dict, to_dict
    from vast.pipeline.config import IngestConfig
    from vast.pipeline.ingest import check_classes, saved_config
    from vast.pipeline.ingest import retry as run_retry
    from vast.shards.summary import format_summary

    check_classes(classes or [])  # before anything starts
    data = to_dict(saved_config(output))
    data["output"] = output
    for k, v in (overrides or {}).items():
        apply_override(data, k, v)
    print(format_summary(run_retry(from_dict(IngestConfig, data), classes)))
    return 0


def annotate(shards: str, output: str, config: str = "demo", stages: list[str] | None = None,
             dependents: str = "rerun", no_progress: bool = False, report: bool = False,
             overrides: dict[str, str] | None = None) -> int:
    """Re-run annotation stages over committed shards into new shards (nothing is downloaded).

    Args:
        shards: an output directory or URL of ingest (or of an earlier annotate)
        output: where the re-annotated shards go (a new directory; resumable)
        config: preset or YAML whose annotation stages (and their options) are used
        stages: stages to re-run (e.g. --stage fusion); default: every annotation stage of the config
        dependents: rerun (default): also re-run the stages computed from the chosen ones (fusion after
            subtitle); stale: keep their fields and mark them stale in provenance
        no_progress: no live progress bar
        report: write OUTPUT/report/index.html at the end (see `vast-pipeline report`) and print its path
    """
    from vast.pipeline.annotate import annotate as run_annotate
    from vast.pipeline.config import load_config
    from vast.shards.summary import format_summary

    cfg = load_config(config, _with(overrides, output=output))
    if no_progress:
        cfg.progress = False
    summary = run_annotate(shards, cfg, stages, dependents)
    print(format_summary(summary))
    for field, why in summary.get("stale", {}).items():
        print(f"stale    {field}: {why}")
    if report:
        _print_report(cfg.output)
    return 0


def report(output: str, samples: int = 12, open: bool = False) -> int:
    """Write OUTPUT/report/index.html: one static page of the dataset's figures and a gallery of clips.

    Args:
        output: the output directory or URL of an ingest, annotate or label
        samples: clips in the gallery (sampled by key hash; ok and failed mixed)
        open: open the page in the default web browser (local outputs)
    """
    import webbrowser
    from pathlib import Path

    path = _print_report(output, samples)
    if open:
        if Path(path).is_file():
            webbrowser.open(Path(path).as_uri())
        else:
            print(f"--open: {path} is not on this machine's disk; copy the report/ folder to open it")
    return 0


def _print_report(output: str, samples: int = 12) -> str:
    from vast.report.page import write_report

    path = write_report(output, samples)
    print(f"report   {path}")
    return path


def label(folder: str, output: str, config: str = "demo", meta: str | None = None, no_progress: bool = False,
          overrides: dict[str, str] | None = None) -> int:
    """Caption a folder of your own videos, images or audio files (VAST's labelling, done right).

    Args:
        folder: the media folder (videos, images, audio files)
        output: where shards and labels.json ({video_id: [captions]}) go
        config: preset or YAML with the captioner stages to run
        meta: a meta.json of [{"video_id": ...}] naming the files to label (default: FOLDER/meta.json
            if present, else every media file)
        no_progress: no live progress bar
    """
    from vast.pipeline.config import load_config
    from vast.pipeline.label import label as run_label
    from vast.shards.summary import format_summary

    cfg = load_config(config, _with(overrides, output=output))
    if no_progress:
        cfg.progress = False
    summary = run_label(folder, cfg, meta)
    print(format_summary(summary))
    print(f"labels   {summary['labels']['items']} item(s) → {summary['labels']['path']}")
    return 0


def export(output: str, dest: str, format: str = "vast27m") -> int:
    """Export the committed samples for other tools: VAST-27M annotation JSON, or upstream VAST's layout.

    Args:
        output: the output directory or URL of an ingest
        dest: the JSON file (vast27m) or the folder (upstream) to write
        format: vast27m (VAST-27M annotation records) or upstream (the layout upstream VAST's loaders read)
    """
    if format == "vast27m":
        from vast.shards.vast27m import export_vast27m

        print(f"{export_vast27m(output, dest)} record(s) → {dest}")
    elif format == "upstream":
        from vast.shards.upstream import export_upstream

        counts = export_upstream(output, dest)
        print(f"{counts['records']} record(s), {counts['videos']} video(s), {counts['audios']} audio file(s) "
              f"→ {dest}")
        if counts["uncaptioned"]:
            print(f"{counts['uncaptioned']} sample(s) without an omni-caption (vast_cap) left out: "
                  "add one with `vast-pipeline annotate OUT NEW --stage fusion`", file=sys.stderr)
    else:
        raise ConfigError(f"unknown export format {format!r}: choose vast27m or upstream")
    return 0


def shards_build(annotations: str, media: str, output: str, config: str = "demo",
                 overrides: dict[str, str] | None = None) -> int:
    """Pack a downstream set (upstream annotation JSON + media folder) into shards of our schema.

    Args:
        annotations: upstream-style JSON (retrieval: video_id + desc/caption; QA: question, answer)
        media: the folder holding the videos ({video_id}.mp4 ...)
        output: the output directory of the shards
        config: ingest preset or YAML for the media settings (its annotation stages are not run)
    """
    from vast.pipeline.build import shards_build as build

    return build(annotations, media, output, config, overrides)


def train(argv: list[str]) -> int:
    """Pretrain, finetune or test VAST on shards (``vast-pipeline train --help`` lists every flag)."""
    from vast.train.cli import exit_if_torchrun_worker
    from vast.train.cli import main as train_main

    return exit_if_torchrun_worker(train_main(argv))


def tiny_models(directory: str) -> int:
    """Write the tiny random-weight models the demo preset uses (VAST captioners, fusion LM).

    Args:
        directory: where to write them (the demo preset reads out/models)
    """
    from vast.captioners.tiny import write_demo_models

    for name, path in write_demo_models(directory).items():
        print(f"{name:<17} {path}")
    return 0


def models(action: str, config: str, models_dir: str | None = None) -> int:
    """Get the models a preset names: `models pull PRESET` downloads every hub model, checksums verified.

    Args:
        action: pull (download what is missing, verify every file; rerun to resume) or list (where each is)
        config: preset name (demo, vast27m, ...) or a YAML file
        models_dir: download into DIR/ORG/NAME, not the HF cache (runs then need VAST_MODELS_DIR=DIR)
    """
    from vast.captioners.hub import local_model, needed_models, pull
    from vast.pipeline.config import load_config

    cfg = load_config(config)
    if action == "pull":
        pull(cfg, models_dir)
        return 0
    if action != "list":
        raise ConfigError(f"models: unknown action {action!r}; use pull or list")
    missing = 0
    for need in needed_models(cfg):
        path = local_model(need.ref)
        missing += path is None
        print(f"{f'stages.{need.stage}.options.{need.option}':<40} {need.ref}: {path or 'MISSING'}")
    return 1 if missing else 0


def sample(directory: str, videos: int = 4) -> int:
    """Generate sample media and an ids.txt naming them (every line form), to try ingest offline.

    Args:
        directory: where to write the media and ids.txt
        videos: how many speech/tone/silent videos to generate
    """
    from vast.pipeline.sample_media import write_sample

    ids = write_sample(directory, videos)
    print(ids)
    return 0


COMMANDS: dict[str, Callable[..., int]] = {
    "ingest": ingest, "status": status, "retry": retry, "annotate": annotate, "report": report,
    "label": label, "export": export, "shards-build": shards_build, "sample": sample,
    "tiny-models": tiny_models, "models": models}
# commands whose flags are their own (the upstream trainer flags): argv is handed over as it is
PASSTHROUGH: dict[str, Callable[[list[str]], int]] = {"train": train}
FLAG_NAMES = {"classes": "--class", "stages": "--stage", "models_dir": "--dir"}


def _ingest_keys() -> list[tuple[str, str, str]]:
    """Every ingest config key: the top level, then each registered stage's run spec and options."""
    from vast.pipeline.config import IngestConfig, StageSpec
    from vast.pipeline.stage import STAGES, stage_class

    rows = [r for r in describe(IngestConfig) if r[0] != "stages"]
    for stage in STAGES:
        rows += [r for r in describe(StageSpec, f"stages.{stage}.") if not r[0].endswith(".options")]
        rows += describe(stage_class(stage).Config, f"stages.{stage}.options.")
    return rows


CONFIG_HELP = {"ingest": _ingest_keys}


def _with(overrides: dict[str, str] | None, **named: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(overrides or {})
    out.update({k: v for k, v in named.items() if v is not None})
    return out


def _arg_docs(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(fn) or ""
    summary, _, rest = doc.partition("\n\nArgs:\n")
    docs = dict(re.findall(r"^\s*(\w+): (.+)$", rest, flags=re.M))
    return summary, docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vast-pipeline",
                                     description="Build VAST-27M-style omni-modal video corpora on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in PASSTHROUGH.items():
        sub.add_parser(name, help=(inspect.getdoc(fn) or "").splitlines()[0], add_help=False)
    for name, fn in COMMANDS.items():
        summary, docs = _arg_docs(fn)
        epilog = None
        if name in CONFIG_HELP:
            epilog = "config keys (override any with --KEY VALUE):\n" + "\n".join(
                f"  --{k:<36} {t}\n      {d}" for k, t, d in CONFIG_HELP[name]())
        p = sub.add_parser(name, help=summary.splitlines()[0], description=summary, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        hints = typing.get_type_hints(fn)
        for pname, param in inspect.signature(fn).parameters.items():
            if pname == "overrides":
                continue
            tp, help_ = hints[pname], docs.get(pname, "")
            is_list = typing.get_origin(tp) is list or list[str] in typing.get_args(tp)
            if param.default is inspect.Parameter.empty and pname not in FLAG_NAMES and not \
                    (is_list and param.default is None):
                p.add_argument(pname, nargs="+" if is_list else None, help=help_)
            elif tp is bool:
                p.add_argument(f"--{pname.replace('_', '-')}", action="store_true", help=help_)
            else:
                flag = FLAG_NAMES.get(pname, f"--{pname.replace('_', '-')}")
                base = int if tp in (int, int | None) else str
                p.add_argument(flag, dest=pname, type=base, default=None if is_list else param.default,
                               action="append" if is_list else None,
                               required=param.default is inspect.Parameter.empty, help=help_)
    return parser


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """``--a.b 1 --c=2`` → ``{"a.b": "1", "c": "2"}``; anything else is an error."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"unexpected argument {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise ConfigError(f"{arg} needs a value")
            key, value = arg[2:], extra[i + 1]
            i += 2
        out[key.replace("-", "_")] = value
    return out


# Exit codes of a refused command (README "Command line"): one line on stderr says why and what to do.
EXIT_USAGE, EXIT_INPUT, EXIT_NOT_OUTPUT, EXIT_NOT_WRITABLE, EXIT_LOCKED, EXIT_INTERRUPTED = 2, 3, 4, 5, 6, 130
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def refusal(error: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for an error that refuses a command, None for anything else (a bug)."""
    from vast.pipeline.inputs import InputFileError
    from vast.shards.store import NotAnOutput, OutputLocked, OutputNotWritable

    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:  # the error itself, then what caused it (a Ray task's error wraps the worker's)
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, getattr(e, "cause", None)]  # not __context__: a bug while handling stays one
    for e in seen:
        if isinstance(e, KeyboardInterrupt):
            return EXIT_INTERRUPTED, "interrupted: committed work is kept; rerun the same command to go on"
        if isinstance(e, ConfigError):
            return EXIT_USAGE, str(e)
        if isinstance(e, (InputFileError, FileNotFoundError)):
            return EXIT_INPUT, str(e)
        if isinstance(e, NotAnOutput):
            return EXIT_NOT_OUTPUT, str(e)
        if isinstance(e, OutputNotWritable):
            return EXIT_NOT_WRITABLE, str(e)
        if isinstance(e, OutputLocked):
            return EXIT_LOCKED, str(e)
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return EXIT_NOT_WRITABLE, (f"cannot write: {e.strerror} ({e.filename}): free space or fix "
                                       "permissions, then rerun the same command (committed work is kept)")
        # a Ray worker's OSError reaches the driver as the text of its traceback only
        remote = _REMOTE_OSERROR.search(str(e)) if type(e).__module__.startswith("ray") else None
        if remote and int(remote.group(1)) in _WRITE_ERRNOS:
            return EXIT_NOT_WRITABLE, (f"cannot write: {remote.group(2)}: free space or fix permissions, "
                                       "then rerun the same command (committed work is kept)")
    return None


_REMOTE_OSERROR = re.compile(r"\b\w*Error: \[Errno (\d+)\] ([^\n]+)")


def _run_refusing(command: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except (Exception, KeyboardInterrupt) as e:
        refused = refusal(e)
        if refused is None:
            raise
        code, line = refused
        print(f"vast-pipeline {command}: error: {' '.join(line.split())}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        return _run_refusing(argv[0], lambda: PASSTHROUGH[argv[0]](argv[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    fn = COMMANDS[args.command]
    kwargs = {k: v for k, v in vars(args).items() if k != "command"}
    if "overrides" not in inspect.signature(fn).parameters and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    def call() -> int:
        if "overrides" in inspect.signature(fn).parameters:
            kwargs["overrides"] = parse_overrides(extra)
        return fn(**kwargs)

    return _run_refusing(args.command, call)


if __name__ == "__main__":
    sys.exit(main())
