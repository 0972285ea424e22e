"""The trainer end to end on shards packed from generated media, with the tiny model on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.conftest import tiny_overrides
from vast.train.cli import UPSTREAM_FLAGS, load_train_config, parse_args
from vast.train.config import TrainConfig
from vast.train.optim import OptimConfig, build_optimizer, build_scheduler
from vast.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ["pretrain", "retrieval", "caption", "qa"]


def log_records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


def step_losses(output: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in log_records(output) if "loss" in r}


@pytest.mark.parametrize("name", PRESETS + [f"tiny-{p}" for p in PRESETS])
def test_every_preset_loads_into_the_config(name):
    cfg = load_train_config(name)
    assert isinstance(cfg, TrainConfig) and cfg.train_task
    if name == "pretrain":
        assert cfg.train_task == "ret%tvas%tvs%tv%ta_cap%tvas%tvs%tv%ta"
        assert cfg.optim.betas == [0.9, 0.98] and cfg.optim.weight_decay == 0.01


def test_upstream_flags_override_the_preset():
    config, overrides = parse_args(["--config", "retrieval", "--train_vision_sample_num", "4",
                                    "--learning_rate", "0.0001", "--frozen_vision", "--checkpointing=false",
                                    "--mode", "testing", "--checkpoint", "run/ckpt/step_00000010.pt",
                                    "--optim.warmup_ratio", "0.2"])
    cfg = load_train_config(config, overrides)
    assert cfg.data.train_vision_sample_num == 4 and cfg.optim.learning_rate == 1e-4
    assert cfg.model.frozen_vision and not cfg.model.checkpointing
    assert cfg.mode == "testing" and cfg.checkpoint == "run/ckpt/step_00000010.pt"
    assert cfg.optim.warmup_ratio == 0.2
    assert set(UPSTREAM_FLAGS) >= {"train_task", "test_task", "train_batch_size", "test_batch_size",
                                   "train_epoch", "train_steps", "valid_freq", "beam_size"}


def test_help_lists_the_upstream_flags(capsys):
    from vast.train.cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--train_vision_sample_num" in text and "--optim.learning_rate" in text


def test_epochs_become_steps_from_the_shard_manifests(vocab, ds_shards, tmp_path):
    from vast.train.trainer import total_steps

    cfg = load_train_config("tiny-retrieval", tiny_overrides(
        vocab, tmp_path, ds_shards, train_steps=0, train_epoch=3.6, train_batch_size=2, grad_accum=1))
    assert total_steps(cfg, world=1) == 8  # ceil(3.6 * 4 samples / 2)
    assert total_steps(cfg, world=2) == 4


def test_optimizer_groups_and_schedule():
    from vast.model import create_model

    model = create_model("tiny")
    opt = build_optimizer(model, OptimConfig(learning_rate=1e-3, vision_learning_rate=1e-5))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["vision"]["lr"] == 1e-5 and groups["main"]["lr"] == 1e-3
    assert groups["main_no_decay"]["weight_decay"] == 0.0 and groups["main"]["weight_decay"] == 0.01
    assert opt.defaults["betas"] == (0.9, 0.98)
    sched = build_scheduler(opt, OptimConfig(warmup_ratio=0.1), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"] / opt.param_groups[0]["initial_lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[99] == pytest.approx(1 / 90)


def test_tiny_pretraining_with_vast27m_grouping_lowers_the_losses(tmp_path, vocab, pretrain_shards):
    out = tmp_path / "run"
    cfg = load_train_config("tiny-pretrain", tiny_overrides(vocab, out, pretrain_shards))
    train(cfg)
    losses = step_losses(out)
    steps = sorted(losses)
    first = sum(losses[s] for s in steps[:5]) / 5
    last = sum(losses[s] for s in steps[-5:]) / 5
    assert last < first - 0.5, (first, last)
    record = [r for r in log_records(out) if r.get("step") == steps[-1]][0]
    groups = ("tvas", "tvs", "tv", "ta")
    assert {f"vcc_{g}" for g in groups} | {f"vcg_{g}" for g in groups} <= set(record)
    assert (out / "ckpt" / f"step_{steps[-1]:08d}.pt").exists()


def test_tiny_retrieval_finetune_reaches_full_recall_on_its_clips(tmp_path, vocab, ds_shards):
    out = tmp_path / "run"
    metrics = train(load_train_config("tiny-retrieval", tiny_overrides(vocab, out, ds_shards)))
    assert metrics["ret_t2v_r1"] == 100.0, metrics
    # testing mode reproduces the score from the final checkpoint
    ckpt = sorted((out / "ckpt").glob("step_*.pt"))[-1]
    tested = train(load_train_config("tiny-retrieval", tiny_overrides(
        vocab, tmp_path / "test", ds_shards, mode="testing", checkpoint=str(ckpt))))
    assert tested == metrics


def test_tiny_caption_finetune_raises_cider(tmp_path, vocab, ds_shards):
    out = tmp_path / "run"
    train(load_train_config("tiny-caption", tiny_overrides(vocab, out, ds_shards, valid_freq=5)))
    cider = [r["cap_cider"] for r in log_records(out) if "cap_cider" in r]
    assert len(cider) == 12 and cider[0] < 0.2 and cider[-1] > cider[0] + 0.5, cider


def test_tiny_qa_finetune_frozen_vision_checkpointing_bf16_accumulation(tmp_path, vocab, ds_shards):
    from vast.train.trainer import build_model

    out = tmp_path / "run"
    cfg = load_train_config("tiny-qa", tiny_overrides(
        vocab, out, ds_shards, train_steps=6, grad_accum=2, train_batch_size=2, precision="bf16",
        frozen_vision="true", checkpointing="true"))
    metrics = train(cfg)
    assert 0.0 <= metrics["qa_accuracy"] <= 100.0
    assert sorted(step_losses(out)) == [1, 2, 3, 4, 5, 6]
    # each step consumed grad_accum micro-batches of 2 samples
    blob = torch.load(out / "ckpt" / "step_00000006.pt", weights_only=True)
    data = blob["extra"]["data"]
    assert data["epoch"] * 4 + sum(map(int, data["consumed"].values())) == 24
    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg.model, torch.device("cpu")).state_dict()
    trained = blob["model"]
    vision = [k for k in trained if k.startswith("vision_encoder.")]
    assert vision and all(torch.equal(trained[k], fresh[k]) for k in vision)
    words = "multimodal_encoder.bert.embeddings.word_embeddings.weight"
    assert not torch.equal(trained[words], fresh[words])  # the text side did train


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "vast.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _args(vocab: Path, out: Path, shards: Path, **more) -> list[str]:
    args = ["--config", "tiny-retrieval"]
    for k, v in tiny_overrides(vocab, out, shards, **more).items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return args


def test_kill_and_resume_reproduces_the_loss_curve(tmp_path, vocab, ds_shards):
    steps = dict(train_steps=16, save_freq=4, checkpointing="true")
    ref = _cli(_args(vocab, tmp_path / "ref", ds_shards, **steps))
    assert ref.wait(timeout=120) == 0, ref.stdout.read().decode()[-3000:]

    out = tmp_path / "killed"
    proc = _cli(_args(vocab, out, ds_shards, **steps))
    deadline = time.time() + 120
    while not (out / "ckpt" / "step_00000008.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its second checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "ckpt" / "step_00000016.pt").exists() is False
    resumed = _cli(_args(vocab, out, ds_shards, **steps))
    assert resumed.wait(timeout=120) == 0, resumed.stdout.read().decode()[-3000:]

    want, got = step_losses(tmp_path / "ref"), step_losses(out)
    assert sorted(got) == list(range(1, 17))
    for s in range(1, 17):
        assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), (s, got[s], want[s])
    assert any("resumed" in r for r in log_records(out))


def _torchrun(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    run = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29531",
                          "-m", "vast.train", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]


def test_two_process_gloo_torchrun_trains_checkpoints_and_resumes(tmp_path, vocab, ds_shards):
    out = tmp_path / "ddp"
    _torchrun(_args(vocab, out, ds_shards, train_steps=4, train_batch_size=2))
    assert sorted(step_losses(out)) == [1, 2, 3, 4]
    assert [r["world"] for r in log_records(out) if "world" in r] == [2]
    blob = torch.load(out / "ckpt" / "step_00000004.pt", weights_only=True)
    assert blob["extra"]["step"] == 4 and len(blob["extra"]["data_by_rank"]) == 2
    # each rank read its own shard: 4 steps x 2 samples = 4 epochs of its 2 samples
    assert [d["epoch"] for d in blob["extra"]["data_by_rank"]] == [3, 3]
    assert any("ret_t2v_r1" in r for r in log_records(out))
    _torchrun(_args(vocab, out, ds_shards, train_steps=6, train_batch_size=2))
    assert sorted(step_losses(out)) == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log_records(out) if "resumed" in r] == [4]


def test_ray_train_runs_two_ddp_workers(tmp_path, vocab, ds_shards):
    from vast.train.cli import main

    out = tmp_path / "ray"
    args = _args(vocab, out, ds_shards, train_steps=4, train_batch_size=2)
    assert main([*args, "--ray", "--ray.num_workers", "2", "--ray.cpus_per_worker", "0.5"]) == 0
    records = log_records(out)
    assert [r["world"] for r in records if "world" in r] == [2]
    assert sorted(step_losses(out)) == [1, 2, 3, 4]
    assert any("ret_t2v_r1" in r for r in records)
