"""The Accelerate training loop on real speech: learning, exact resume, checkpoints, logging, NaN handling, CLI."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from rvqcodec import cli
from rvqcodec.model import Codec
from rvqcodec.training.config import config_to_dict, load_config
from rvqcodec.training.checkpoints import latest_checkpoint, read_training_checkpoint, step_checkpoints
from rvqcodec.training.sampling import StepBatchSampler
from rvqcodec.training.setup import lr_factor
from rvqcodec.training.step import TrainingDiverged
from rvqcodec.training.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO_ROOT / "recipes" / "librispeech" / "tiny.yaml"

# A very small codec (~0.1 M parameters) and discriminators: a step takes a fraction of a second on one core.
# K = 64 codes (6 bits) at 50 frames/s -> 0.3 kbps per stage: 0.6 and 1.2 kbps are n_q = 2 and 4.
SMALL = [
    "model.channels=4", "model.latent_dim=32", "model.n_residual_units=1", "model.n_q=4",
    "model.codebook_size=64", "disc.stft_n_ffts=[256]", "disc.stft_channels=4", "disc.periods=[2]",
    "disc.period_channels=4", "disc.period_max_channels=16",
    "data.segment_seconds=0.5", "data.batch_size=2", "data.max_valid_files=1", "data.max_valid_seconds=2",
    "train.valid_bitrates=[0.6,1.2]", "train.valid_pesq=false", "train.tensorboard=false", "train.n_samples=1",
    "optim.warmup_steps=0",
]


def make_config(speech_root: Path, run_dir: Path, *overrides: str):
    return load_config(TINY_RECIPE, [f"data.root={speech_root}", f"train.run_dir={run_dir}", *SMALL, *overrides])


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def all_tensors(tree, prefix=""):
    """Flatten nested dicts/lists of a checkpoint into {path: tensor} (non-tensors as python values)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(all_tensors(v, f"{prefix}{k}/"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(all_tensors(v, f"{prefix}{i}/"))
    else:
        out[prefix.rstrip("/")] = tree
    return out


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two training checkpoints hold the same state, bit for bit: weights, every codec buffer (EMA codebooks and
    statistics windows), discriminators, optimisers, schedulers and random number generators."""
    for part in ("codec", "codec_buffers", "disc", "opt_g", "opt_d", "sched_g", "sched_d", "rng"):
        ta, tb = all_tensors(a[part]), all_tensors(b[part])
        assert ta.keys() == tb.keys(), part
        for key in ta:
            va, vb = ta[key], tb[key]
            if torch.is_tensor(va):
                assert torch.equal(va, vb), f"{part}/{key} differs after resume"
            elif isinstance(va, np.ndarray):
                assert np.array_equal(va, vb), f"{part}/{key} differs after resume"
            else:
                assert va == vb, f"{part}/{key} differs after resume"
    assert any("embed" in k for k in a["codec"])  # the EMA codebooks were compared


# ------------------------------------------------------------------------------------------ pure functions


def test_step_batch_sampler_is_a_function_of_the_step():
    n, batch = 10, 3
    full = StepBatchSampler(n, batch, seed=5)
    it = iter(full)
    first = [next(it) for _ in range(12)]
    resumed = iter(StepBatchSampler(n, batch, seed=5, start_batch=7))
    assert [next(resumed) for _ in range(5)] == first[7:]
    # every epoch is a permutation: positions 0..n-1 hit every index exactly once
    flat = [idx for b in first for idx in b]
    epochs = {}
    for epoch, index in flat:
        epochs.setdefault(epoch, []).append(index)
    assert sorted(epochs[0]) == list(range(n)) and sorted(epochs[1]) == list(range(n))
    assert epochs[0] != epochs[1]  # a new order each epoch
    # two processes split one global stream without overlap
    r0 = StepBatchSampler(n, batch, seed=5, rank=0, world_size=2)
    r1 = StepBatchSampler(n, batch, seed=5, rank=1, world_size=2)
    assert r0.batch(0) + r1.batch(0) + r0.batch(1)[:1] == first[0] + first[1] + first[2][:1]
    assert StepBatchSampler(n, batch, seed=6).batch(0) != first[0]


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = load_config(None, ["train.steps=100", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))  # rising warmup
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then decaying
    assert lr_factor(100, cfg) == pytest.approx(0.1) and lr_factor(1000, cfg) == pytest.approx(0.1)
    const = load_config(None, ["optim.scheduler=constant"])
    assert lr_factor(0, const) == lr_factor(500, const) == 1.0


# ------------------------------------------------------------------------------------------ training runs


def test_tiny_codec_learns_on_speech_and_writes_a_complete_run(speech_root, tmp_path):
    run_dir = tmp_path / "run"
    steps = 30
    cfg = make_config(speech_root, run_dir, f"train.steps={steps}", "train.log_every=5", "train.valid_every=15",
                      "train.ckpt_every=15", "loss.adv=0", "loss.fm=0", "optim.lr=3e-3", "train.valid_pesq=true",
                      "train.tensorboard=true", "model.quantizer_dropout=0")
    summary = Trainer(cfg, show_progress=False).fit()
    assert summary["step"] == steps and summary["skipped"] == 0

    records = read_log(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in valid] == [15, 30]
    # reconstruction falls: mean of the last window well under the first
    assert train[-1]["loss/recon"] < 0.8 * train[0]["loss/recon"], [r["loss/recon"] for r in train]
    assert train[-1]["loss/mel"] < train[0]["loss/mel"]
    for r in train:
        assert r["lr/generator"] > 0 and math.isfinite(r["grad_norm/generator"])
        assert "lr/discriminator" not in r  # discriminators are off in this run
        for stage in range(1, 5):  # no quantizer dropout here: every stage runs every step
            for stat in ("utilization", "perplexity", "dead_codes", "rel_qe", "scale_median"):
                assert f"vq/s{stage}/{stat}" in r, (stage, stat)
        assert 0 < r["vq/s1/utilization"] <= 100 and 1 <= r["vq/s1/perplexity"] <= 64
        assert 0 <= r["vq/s1/rel_qe"] < 1.5
    # The k-means init gives every stage a third of its codes at once: in the first window (steps 1-5, 250 frames
    # for K = 64, so at most 78 %) stages 1-4 used 37.5, 32.8, 34.4 and 32.8 % of their codes (without the k-means
    # init 11-17 %; initialised lazily from one 50-frame batch, stages 2-4 4.7 %). The floor is 25 %. (Later at
    # this learning rate a stage can collapse, stage 1 to one code by step 15.) In that first window every code
    # it did not use has had no frame since the init, so it is reported dead (issue 28: dead_codes read 0 while
    # utilisation fell; measured dead 40, 43, 42, 44 for unused 40, 43, 42, 43).
    first = train[0]
    for stage in range(1, 5):
        assert first[f"vq/s{stage}/utilization"] >= 25.0, (stage, first[f"vq/s{stage}/utilization"])
        assert first[f"vq/s{stage}/dead_codes"] >= first[f"vq/s{stage}/unused_codes"] > 0, stage
    # cosine schedule: the logged learning rate decreases
    assert train[-1]["lr/generator"] < train[0]["lr/generator"]
    for r in valid:  # the model-selection score is the mean mel distance over the validation bitrates
        assert r["valid/mel"] == pytest.approx((r["valid/0.6kbps/mel"] + r["valid/1.2kbps/mel"]) / 2)
    # The last validation's scores are those of its example audio (one validation file, written as the example):
    # recomputed here from the written files. PCM_16 rounding of the files moves them only slightly.
    from rvqcodec.metrics import mel_distance, pesq_wb, si_sdr

    example_dir = run_dir / "samples" / "step_0000030"
    (ref_path,) = example_dir.glob("*_ref.wav")
    reference, sr = soundfile.read(ref_path, dtype="float64")
    for kbps in ("0.6", "1.2"):
        decoded, _ = soundfile.read(str(ref_path).replace("_ref.wav", f"_{kbps}kbps.wav"), dtype="float64")
        logged = valid[-1]
        assert mel_distance(reference, decoded, sr) == pytest.approx(logged[f"valid/{kbps}kbps/mel"], abs=0.02)
        assert si_sdr(reference, decoded) == pytest.approx(logged[f"valid/{kbps}kbps/si_sdr"], abs=0.2)
        assert pesq_wb(reference, decoded, sr) == pytest.approx(logged[f"valid/{kbps}kbps/pesq_wb"], abs=0.05)

    # files of the run
    assert [s for s, _ in step_checkpoints(run_dir)] == [15, 30]
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    samples = sorted(p.name for p in (run_dir / "samples" / "step_0000030").iterdir())
    utterance = samples[0].rsplit("_", 1)[0]
    assert samples == [f"{utterance}_0.6kbps.wav", f"{utterance}_1.2kbps.wav", f"{utterance}_ref.wav"]
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not list(run_dir.rglob("*.tmp"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == config_to_dict(cfg)

    # the exported codec rebuilds alone and codes/decodes speech at a validation bitrate
    codec = Codec.load(run_dir / "codec.pt")
    trainer_state = read_training_checkpoint(latest_checkpoint(run_dir))
    for name, value in codec.state_dict().items():
        assert torch.equal(value, trainer_state["codec"][name]), name
    audio, _ = soundfile.read(run_dir / "samples" / "step_0000030" / f"{utterance}_ref.wav", dtype="float32")
    wav = torch.from_numpy(audio).reshape(1, 1, -1)
    codes = codec.encode(wav, n_q=codec.n_q_for_bitrate(1.2))
    assert codes.shape == (1, 4, math.ceil(wav.shape[-1] / codec.hop_length))
    decoded = codec.decode(codes)[..., : wav.shape[-1]]
    assert decoded.shape == wav.shape and torch.isfinite(decoded).all()
    assert Codec.load(run_dir / "codec_best.pt").config == codec.config


def test_interrupted_and_resumed_run_is_bit_identical(speech_root, tmp_path):
    # Discriminators start at step 2 and grad accumulation is on, so every piece of state is exercised:
    # EMA codebooks + k-means init, quantizer dropout (python RNG), both optimisers and schedulers, the
    # discriminators' random crops and the input corruptions (torch RNG).
    common = ["train.steps=5", "train.ckpt_every=2", "train.valid_every=2", "train.log_every=3",
              "loss.disc_start_step=1", "train.grad_accum=2", "model.quantizer_dropout=0.5",
              "loss.disc_segment_seconds=0.3", "augment.prob=0.5", "augment.noise=0", "augment.n_rooms=2"]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    Trainer(make_config(speech_root, straight_dir, *common), show_progress=False).fit()

    # Same run with a DataLoader worker process, killed after step 3 (checkpoint at 2 is the latest).
    first = Trainer(make_config(speech_root, resumed_dir, *common, "data.num_workers=1"), show_progress=False)
    first.fit(stop_after_step=3)
    assert latest_checkpoint(resumed_dir).name == "step_0000002.pt"
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(make_config(speech_root, resumed_dir, *common), show_progress=False)
    second = Trainer(make_config(speech_root, resumed_dir, *common, "train.resume=true"), show_progress=False)
    second.fit()

    a = read_training_checkpoint(straight_dir / "checkpoints" / "step_0000005.pt")
    b = read_training_checkpoint(resumed_dir / "checkpoints" / "step_0000005.pt")
    assert a["step"] == b["step"] == 5
    assert_same_training_state(a, b)
    assert a["opt_d"]["state"], "discriminator optimiser never stepped"
    # The log holds each step once (what the interrupted run logged after step 2 was dropped on resume), and
    # the records match the uninterrupted run's, including the per-stage statistics of the window of steps 1-3
    # that straddles the interruption (the statistics buffers are part of the checkpoint).
    straight_log, resumed_log = read_log(straight_dir), read_log(resumed_dir)
    assert [(r["step"], r["kind"]) for r in resumed_log] == [
        (2, "valid"), (3, "train"), (4, "valid"), (5, "train"), (5, "valid")]
    untimed = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/", "lineage/minutes"))}  # noqa: E731
    assert [untimed(r) for r in resumed_log] == [untimed(r) for r in straight_log]
    assert "vq/s1/perplexity" in resumed_log[1]

    # resuming with another model is refused with a one-line message, before anything is written
    with pytest.raises(ValueError, match="its model config differs in n_q"):
        Trainer(make_config(speech_root, resumed_dir, *common, "train.resume=true", "model.n_q=2",
                            "train.valid_bitrates=[0.6]"), show_progress=False)


# ``rvqcodec train ARGV[2:]`` that, once the checkpoint of step ARGV[1] is written, waits in the next training step
# (its batch already drawn) until Ctrl-C arrives: the signal always lands mid-run, however fast the machine is.
_WAIT_FOR_CTRL_C = """
import signal, sys, time
from rvqcodec.cli import main
from rvqcodec.training.trainer import Trainer
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if this suite runs as a background job
hold, real_step = int(sys.argv[1]), Trainer.train_step
def train_step(self, *args, **kwargs):
    while self.step == hold:
        time.sleep(0.01)
    return real_step(self, *args, **kwargs)
Trainer.train_step = train_step
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_stops_the_train_command_and_resume_finishes_the_same_run(speech_root, tmp_path):
    """A real ``rvqcodec train`` process gets SIGINT after its first checkpoint: it exits with 130 and keeps that
    checkpoint; ``train.resume=true`` in a new process ends with the training state of an uninterrupted run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])

    def train_args(run_dir: Path, *extra: str) -> list[str]:
        return ["train", str(TINY_RECIPE), f"data.root={speech_root}", f"train.run_dir={run_dir}", *SMALL,
                "train.steps=4", "train.ckpt_every=2", "train.log_every=2", "train.valid_every=100",
                "loss.disc_start_step=1", "loss.disc_segment_seconds=0.3", *extra, "--no-progress"]

    def rvqcodec(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rvqcodec", *args], capture_output=True, text=True,
                              env=env, cwd=REPO_ROOT, timeout=600)

    run_dir, straight_dir = tmp_path / "interrupted", tmp_path / "straight"
    first_checkpoint = run_dir / "checkpoints" / "step_0000002.pt"
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _WAIT_FOR_CTRL_C, "2", *train_args(run_dir)], stdout=out,
                                stderr=err, env=env, cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + 600  # a guard against a hung child, not a measurement
            while not first_checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first_checkpoint.exists(), (proc.poll(), (tmp_path / "err.txt").read_text()[-2000:])
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 130 and "rvqcodec train: interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert [step for step, _ in step_checkpoints(run_dir)] == [2]  # step 3 was under way: no later checkpoint
    assert read_training_checkpoint(first_checkpoint)["step"] == 2

    resumed = rvqcodec(*train_args(run_dir, "train.resume=true"))
    assert resumed.returncode == 0 and "done: 4 steps" in resumed.stdout, resumed.stderr[-2000:]
    straight = rvqcodec(*train_args(straight_dir))
    assert straight.returncode == 0, straight.stderr[-2000:]

    a = read_training_checkpoint(straight_dir / "checkpoints" / "step_0000004.pt")
    b = read_training_checkpoint(run_dir / "checkpoints" / "step_0000004.pt")
    assert a["step"] == b["step"] == 4
    assert_same_training_state(a, b)
    assert a["opt_d"]["state"], "discriminator optimiser never stepped"
    assert Codec.load(run_dir / "codec.pt").model_id == Codec.load(straight_dir / "codec.pt").model_id
    untimed = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/", "lineage/minutes"))}  # noqa: E731
    assert [untimed(r) for r in read_log(run_dir)] == [untimed(r) for r in read_log(straight_dir)]


def test_discriminator_warmup_trains_only_the_discriminators(speech_root, tmp_path):
    cfg = make_config(speech_root, tmp_path / "run", "train.steps=4", "loss.disc_start_step=0",
                      "loss.disc_warmup_steps=3", "loss.disc_segment_seconds=0.25", "train.valid_every=100",
                      "train.ckpt_every=100", "train.log_every=1", "model.quantizer_dropout=1.0")
    trainer = Trainer(cfg, show_progress=False)
    codec, disc = trainer.codec_module, trainer.disc_module
    trainer.fit(stop_after_step=1)  # k-means initialises the codebooks, then the first warm-up step
    codec_before = {k: v.clone() for k, v in codec.state_dict().items()}
    disc_before = {k: v.clone() for k, v in disc.state_dict().items()}
    trainer.fit(stop_after_step=3)
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in codec_before.items())  # weights and codebooks
    assert any(not torch.equal(v, disc.state_dict()[k]) for k, v in disc_before.items())
    trainer.fit()  # step 4: the generator learns again
    assert any(not torch.equal(v, codec.state_dict()[k]) for k, v in codec_before.items())
    train_records = [r for r in read_log(tmp_path / "run") if r["kind"] == "train"]
    assert [("loss/generator" in r, "loss/discriminator" in r) for r in train_records] == [
        (False, True), (False, True), (False, True), (True, True)]


def test_nan_loss_skips_the_step_and_never_reaches_a_checkpoint(speech_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = make_config(speech_root, run_dir, "train.steps=6", "train.ckpt_every=1", "train.valid_every=100",
                      "train.log_every=1", "train.max_bad_steps=3", "loss.disc_start_step=0", "train.keep_last=5")
    trainer = Trainer(cfg, show_progress=False)
    poisoned_steps = {2, 3, 4, 5, 6}  # 1-based: step 1 is good, then NaN audio in every batch
    real_step = trainer.train_step

    def poisoned(micro_batches):
        if trainer.step + 1 in poisoned_steps:
            micro_batches = [torch.full_like(x, float("nan")) for x in micro_batches]
        return real_step(micro_batches)

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps had a non-finite loss"):
        trainer.fit()

    # steps 2 and 3 were skipped (checkpointed, clean), step 4 was the third bad step in a row and stopped the run
    assert [s for s, _ in step_checkpoints(run_dir)][-1] == 3
    good = read_training_checkpoint(run_dir / "checkpoints" / "step_0000001.pt")
    after = read_training_checkpoint(run_dir / "checkpoints" / "step_0000003.pt")
    assert after["bad_streak"] == 2 and after["bad_total"] == 2
    for part in ("codec", "codec_buffers", "disc"):
        for name, value in after[part].items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), f"{part}/{name} holds NaN"
            assert torch.equal(value, good[part][name]), f"{part}/{name} changed during skipped steps"
    for state in after["opt_g"]["state"].values():
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
    exported = Codec.load(run_dir / "codec.pt")  # the exported codec is the clean state too
    assert all(torch.isfinite(v).all() for v in exported.state_dict().values() if v.is_floating_point())
    skipped = [r["skipped/total"] for r in read_log(run_dir) if r["kind"] == "train"]
    assert skipped == [0.0, 1.0, 2.0]


def test_bf16_mixed_precision_trains_with_fp32_weights(speech_root, tmp_path):
    # A second Accelerator in this process with another precision (the others above used "no").
    run_dir = tmp_path / "run"
    cfg = make_config(speech_root, run_dir, "train.steps=2", "train.mixed_precision=bf16", "loss.disc_start_step=0",
                      "train.log_every=1")
    summary = Trainer(cfg, show_progress=False).fit()
    assert summary["skipped"] == 0
    for record in read_log(run_dir):
        if record["kind"] == "train":
            assert math.isfinite(record["loss/generator"]) and math.isfinite(record["loss/discriminator"])
    state = read_training_checkpoint(latest_checkpoint(run_dir))
    assert all(v.dtype == torch.float32 for v in state["codec"].values() if v.is_floating_point())


def test_wall_clock_budget_stops_with_a_validated_checkpoint_and_resumes(speech_root, tmp_path):
    run_dir = tmp_path / "run"
    # a budget of 6 ms: the first step always outlasts it
    cfg = make_config(speech_root, run_dir, "train.steps=50", "train.max_minutes=0.0001", "train.log_every=10",
                      "train.valid_every=10", "train.ckpt_every=10")
    summary = Trainer(cfg, show_progress=False).fit()
    assert summary["step"] == 1
    assert [n for n, _ in step_checkpoints(run_dir)] == [1]
    kinds = {(r["kind"], r["step"]) for r in read_log(run_dir)}
    assert ("train", 1) in kinds and ("valid", 1) in kinds
    assert (run_dir / "codec.pt").exists()
    resumed = make_config(speech_root, run_dir, "train.steps=3", "train.resume=true")
    assert Trainer(resumed, show_progress=False).fit()["step"] == 3


def test_a_run_stops_at_a_chosen_step_on_its_schedule_and_resumes(speech_root, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(speech_root, run_dir, "train.steps=4", "train.stop_at_step=2", "optim.scheduler=cosine",
                      "train.valid_every=10", "train.ckpt_every=10")
    trainer = Trainer(cfg, show_progress=False)
    assert trainer.fit()["step"] == 2
    assert [n for n, _ in step_checkpoints(run_dir)] == [2] and ("valid", 2) in {
        (r["kind"], r["step"]) for r in read_log(run_dir)}
    straight = Trainer(make_config(speech_root, tmp_path / "straight", "train.steps=4", "optim.scheduler=cosine"),
                       show_progress=False)
    straight.fit(stop_after_step=2)
    assert trainer.sched_g.get_last_lr() == straight.sched_g.get_last_lr()  # the 4-step schedule, not a 2-step one
    resumed = make_config(speech_root, run_dir, "train.steps=4", "train.resume=true")
    assert Trainer(resumed, show_progress=False).fit()["step"] == 4
    with pytest.raises(ValueError, match="train.stop_at_step"):
        make_config(speech_root, run_dir, "train.steps=4", "train.stop_at_step=5")


# ------------------------------------------------------------------------------------------ command line


def test_cli_errors_are_one_line(speech_root, tmp_path, capsys):
    base = ["train", str(TINY_RECIPE), f"data.root={speech_root}", f"train.run_dir={tmp_path / 'r'}", *SMALL]
    cases = [
        (["train.stepz=3"], "unknown config key 'train.stepz' (did you mean 'train.steps'?)"),
        (["train.mixed_precision=fp8"], "train.mixed_precision"),
        ([f"data.root={tmp_path / 'nowhere'}"], "LibriSpeech"),
        (["train.valid_bitrates=[1.5]"], "no bitrate of 1.5 kbps for this model; valid bitrates (kbps): 0.3, 0.6"),
    ]
    for extra, needle in cases:
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rvqcodec train: error:") and needle in err, err
        assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for a refused run
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_print_config_shows_the_resolved_overrides(tmp_path, capsys):
    assert cli.main(["train", str(TINY_RECIPE), "model.n_q=8", "train.steps=12", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["n_q"] == 8 and printed["train"]["steps"] == 12
    assert printed["model"]["codebook_size"] == 1024  # the preset's value, written out


# A small frame-rate codec: K = 64 codes at 50 frames/s -> 0.3 kbps per stage.
CONVNEXT = [
    "model.preset=convnext", "model.frame_dim=32", "model.encoder_blocks=1", "model.decoder_blocks=1",
    "model.latent_dim=16", "model.codebook_dim=8", "model.n_q=4", "model.codebook_size=64",
    "loss.adv=0", "loss.fm=0", "loss.mrstft=0", "loss.complex=1.0", "data.preload=true",
]


def test_autoencoder_warmup_then_kmeans_from_trained_latents_and_exact_resume(speech_root, tmp_path):
    # Steps 1-3 train a plain autoencoder on preloaded audio (train-clean-100 plus an extra folder); before step 4
    # the codebooks are k-means-initialised from the trained encoder's latents and quantization starts. An
    # interruption inside the warm-up resumes bit-identically, and the lineage adds up over the two runs.
    extra = tmp_path / "extra"
    extra.mkdir()
    clip = sorted((speech_root / "LibriSpeech" / "train-clean-100").rglob("*.flac"))[0]
    audio, sr = soundfile.read(clip, dtype="float32")
    soundfile.write(extra / "more.flac", audio[: 3 * sr], sr)
    common = [*CONVNEXT, "train.steps=6", "train.ae_warmup_steps=3", "train.kmeans_init_seconds=20",
              "train.valid_every=3", "train.ckpt_every=2", "train.log_every=1", f"data.extra_train_dirs=[{extra}]",
              "model.quantizer_dropout=0.5"]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight = Trainer(make_config(speech_root, straight_dir, *common), show_progress=False)
    assert straight.train_set.files[-1] == extra / "more.flac"
    assert straight.clips is not None and straight.clips.total_seconds > 1800
    straight.fit()
    log = read_log(straight_dir)
    train = {r["step"]: r for r in log if r["kind"] == "train"}
    valid = {r["step"]: r for r in log if r["kind"] == "valid"}
    assert [train[s]["n_q"] for s in (1, 2, 3)] == [0, 0, 0] and float(train[3]["loss/commit"]) == 0.0
    assert all(train[s]["n_q"] >= 1 for s in (4, 5, 6)) and train[4]["loss/commit"] > 0
    assert "valid/ae/mel" in valid[3] and "valid/0.6kbps/mel" not in valid[3]
    assert valid[3]["valid/mel"] is None  # NaN (written as null): no "best" model from the warm-up
    assert "valid/0.6kbps/mel" in valid[6] and "valid/ae/mel" not in valid[6]
    assert train[4]["throughput/audio_seconds_per_second"] > 0

    first = Trainer(make_config(speech_root, resumed_dir, *common), show_progress=False)
    first.fit(stop_after_step=3)  # checkpoint at step 2, inside the warm-up
    second = Trainer(make_config(speech_root, resumed_dir, *common, "train.resume=true"), show_progress=False)
    assert second.step == 2 and not second._codebooks_ready()
    second.fit()
    a = read_training_checkpoint(straight_dir / "checkpoints" / "step_0000006.pt")
    b = read_training_checkpoint(resumed_dir / "checkpoints" / "step_0000006.pt")
    for part in ("codec", "opt_g"):
        ta, tb = all_tensors(a[part]), all_tensors(b[part])
        for key in ta:
            if torch.is_tensor(ta[key]):
                assert torch.equal(ta[key], tb[key]), f"{part}/{key} differs after resume"
    assert a["lineage"]["steps"] == b["lineage"]["steps"] == 6
    assert a["lineage"]["audio_seconds"] == b["lineage"]["audio_seconds"] == 6 * 2 * 0.5
    assert set(b["lineage"]["minutes"]) == {"cpu"} and b["lineage"]["minutes"]["cpu"] > 0
    assert Codec.read_checkpoint(resumed_dir / "codec.pt")["meta"]["lineage"]["steps"] == 6


def test_training_state_of_the_default_preset_fits_48_mib_and_is_device_free(speech_root, tmp_path):
    # The state that travels between a CPU and a GPU machine: the default model with its AdamW moments.
    cfg = load_config(REPO_ROOT / "recipes" / "librispeech" / "convnext.yaml", [
        f"data.root={speech_root}", f"train.run_dir={tmp_path / 'run'}", "data.extra_train_dirs=[]",
        "data.batch_size=2", "data.preload=false", "train.steps=1", "train.kmeans_init_seconds=20",
        "train.ae_warmup_steps=0", "train.valid_pesq=false", "data.max_valid_files=1", "data.max_valid_seconds=1",
        "train.tensorboard=false", "train.n_samples=0"])
    trainer = Trainer(cfg, show_progress=False)
    trainer.fit()
    path = latest_checkpoint(tmp_path / "run")
    assert path.stat().st_size < 48 * 2**20
    state = read_training_checkpoint(path)
    tensors = [v for v in all_tensors(state).values() if torch.is_tensor(v)]
    assert all(t.device.type == "cpu" for t in tensors)
    assert state["opt_g"]["state"]  # the moments are in it
    assert "cuda" not in state["rng"][0] or torch.cuda.is_available()


def test_a_new_run_can_start_from_a_trained_codec_and_carry_its_lineage(speech_root, tmp_path):
    first_dir, tuned_dir = tmp_path / "first", tmp_path / "tuned"
    Trainer(make_config(speech_root, first_dir, *CONVNEXT, "train.steps=2", "train.kmeans_init_seconds=10"),
            show_progress=False).fit()
    start = Codec.load(first_dir / "codec.pt")
    tuned = Trainer(make_config(speech_root, tuned_dir, *CONVNEXT, "train.steps=1", "loss.adv=1", "loss.fm=2",
                                "loss.disc_start_step=0", f"train.init_from={first_dir / 'codec.pt'}"),
                    show_progress=False)
    for name, value in start.state_dict().items():  # weights and codebooks as trained; no new k-means
        assert torch.equal(tuned.codec_module.state_dict()[name], value), name
    assert tuned._codebooks_ready() and tuned.lineage.steps == 2
    tuned.fit()
    state = read_training_checkpoint(latest_checkpoint(tuned_dir))
    assert state["step"] == 1 and state["lineage"]["steps"] == 3 and state["disc"] is not None
    # an adversarial run started from an adversarial run's training checkpoint continues with its discriminators
    again = Trainer(make_config(speech_root, tmp_path / "again", *CONVNEXT, "train.steps=1", "loss.adv=1",
                                "loss.fm=2", "loss.disc_start_step=0", f"train.init_from={latest_checkpoint(tuned_dir)}"),
                    show_progress=False)
    for name, value in state["disc"].items():
        assert torch.equal(again.disc_module.state_dict()[name], value), name
    from_state = Trainer(make_config(speech_root, tmp_path / "from-state", *CONVNEXT, "train.steps=1",
                                     f"train.init_from={latest_checkpoint(first_dir)}"), show_progress=False)
    for name, value in start.state_dict().items():  # a training checkpoint works too
        assert torch.equal(from_state.codec_module.state_dict()[name], value), name
    # fine-tuning under another gradient estimator or codebook hygiene is allowed (same weights, same decode) ...
    ste = Trainer(make_config(speech_root, tmp_path / "ste", *CONVNEXT, "model.estimator=ste",
                              "model.dead_code_patience=7", f"train.init_from={first_dir / 'codec.pt'}"),
                  show_progress=False)
    assert ste.codec_module.config.estimator == "ste"
    for name, value in start.state_dict().items():
        assert torch.equal(ste.codec_module.state_dict()[name], value), name
    # a rate-conditioned decoder may be added (its rows start at zero: the same decode), not taken away
    grown = Trainer(make_config(speech_root, tmp_path / "grown", *CONVNEXT, "model.rate_conditioning=true",
                                f"train.init_from={first_dir / 'codec.pt'}"), show_progress=False)
    grown_state = grown.codec_module.state_dict()
    assert set(grown_state) - set(start.state_dict()) == {"decoder.rate_film.weight"}
    assert not grown_state["decoder.rate_film.weight"].any()
    for name, value in start.state_dict().items():
        assert torch.equal(grown_state[name], value), name
    grown.codec_module.save(tmp_path / "grown.pt")
    with pytest.raises(ValueError, match=r"model config differs in rate_conditioning$"):
        Trainer(make_config(speech_root, tmp_path / "shrunk", *CONVNEXT, f"train.init_from={tmp_path / 'grown.pt'}"),
                show_progress=False)
    # ... another architecture or bitrate is not, and the message names only what may not differ
    with pytest.raises(ValueError, match=r"model config differs in n_q$"):
        Trainer(make_config(speech_root, tmp_path / "other", *CONVNEXT, "model.n_q=2", "train.valid_bitrates=[0.6]",
                            "model.estimator=ste", f"train.init_from={first_dir / 'codec.pt'}"), show_progress=False)
