"""Training on any folder of audio (issue 28, point 1): folders and list files of any format and rate, validation
from a separate folder or a deterministic held-out split, one-line data errors, and the fine-tune recipe that starts
from the shipped model."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from rvqcodec import cli
from rvqcodec.data.audio_io import resample
from rvqcodec.model import Codec
from rvqcodec.training.config import load_config
from rvqcodec.training.data_files import data_files, held_out_split
from rvqcodec.training.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO_ROOT / "recipes" / "librispeech" / "tiny.yaml"
FINETUNE_RECIPE = REPO_ROOT / "recipes" / "finetune" / "folder.yaml"
SHIPPED = REPO_ROOT / "rvqcodec" / "pretrained" / "default.pt"

# A very small SEANet codec (as tests/test_train.py's SMALL): K = 64 codes -> 0.3 kbps per stage.
SMALL = [
    "model.channels=4", "model.latent_dim=32", "model.n_residual_units=1", "model.n_q=4", "model.codebook_size=64",
    "loss.adv=0", "loss.fm=0", "data.segment_seconds=0.5", "data.batch_size=2", "data.max_valid_files=2",
    "data.max_valid_seconds=2", "train.valid_bitrates=[0.6,1.2]", "train.valid_pesq=false", "train.tensorboard=false",
    "train.n_samples=2", "optim.warmup_steps=0", "train.kmeans_init_seconds=4",
]
# The user's folder: real speech cut into files of every kind a user has (nested folders, 16 and 44.1 kHz,
# stereo, FLAC beside WAV), plus what must be skipped (hidden files and folders, non-audio).
FOLDER_FILES = {
    "alice/a1.wav": (16000, 1),
    "alice/session2/a2.wav": (16000, 1),
    "alice/session2/a3.flac": (16000, 1),
    "bob/b1.wav": (16000, 2),
    "bob/b2_44k.wav": (44100, 1),
    "carol/deep/er/c1.wav": (16000, 1),
}


def cut_speech(speech_root: Path, index: int, seconds: float = 2.5) -> np.ndarray:
    """``seconds`` of the ``index``-th dev-clean utterance (float32, 16 kHz, from 0.5 s in: speech, not silence)."""
    files = sorted((speech_root / "LibriSpeech" / "dev-clean").rglob("*.flac"))
    audio, sr = soundfile.read(files[index], dtype="float32")
    assert sr == 16000
    return audio[sr // 2: sr // 2 + int(seconds * sr)]


@pytest.fixture(scope="module")
def my_wavs(speech_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user") / "my_wavs"
    for index, (relative, (rate, channels)) in enumerate(FOLDER_FILES.items()):
        audio = cut_speech(speech_root, index)
        if rate != 16000:
            audio = resample(torch.from_numpy(audio), 16000, rate).numpy()
        if channels == 2:
            audio = np.stack([audio, 0.5 * audio], axis=1)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, audio, rate)
    (root / ".cache").mkdir()
    soundfile.write(root / ".cache" / "hidden.wav", cut_speech(speech_root, 9), 16000)
    soundfile.write(root / "bob" / "._b1.wav", cut_speech(speech_root, 10), 16000)  # a macOS resource-fork file
    (root / "bob" / "notes.txt").write_text("not audio")
    return root


def folder_config(run_dir: Path, *overrides: str):
    """The tiny LibriSpeech recipe switched to a folder: no LibriSpeech root or subsets at all."""
    return load_config(TINY_RECIPE, ["data.root=", "data.train_subsets=[]", "data.valid_subset=",
                                     f"train.run_dir={run_dir}", *SMALL, *overrides])


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def split_value(key: str) -> float:
    """The split rule as documented (SHA-1 of the key, first 8 bytes as a fraction), computed independently."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64


# ------------------------------------------------------------------------------------------ the split


def test_held_out_split_is_a_function_of_the_keys_disjoint_and_stable_when_files_are_added():
    keys = [f"speaker{i % 7}/utt{i}.wav" for i in range(300)]
    train, held = held_out_split(keys, keys, 0.2)
    assert set(train).isdisjoint(held) and sorted(train + held) == sorted(keys)
    assert set(held) == {k for k in keys if split_value(k) < 0.2}
    assert 35 <= len(held) <= 85  # about a fifth (binomial: mean 60, sd 7)
    assert held == sorted(held, key=split_value)  # ordered by the hash: the first ones are a spread sample
    assert train == [k for k in keys if k not in set(held)]  # the training order is kept
    assert held_out_split(list(reversed(keys)), list(reversed(keys)), 0.2)[1] == held  # the order does not matter
    more = keys + [f"new/utt{i}.wav" for i in range(100)]
    train2, held2 = held_out_split(more, more, 0.2)
    assert set(held2) & set(keys) == set(held) and set(train2) & set(keys) == set(train)  # no old file moved
    # at least one file on each side, whatever the fraction
    few = ["a.wav", "b.wav"]
    for fraction in (1e-9, 0.999999):
        t, h = held_out_split(few, few, fraction)
        assert len(t) == len(h) == 1 and set(t + h) == set(few)
    with pytest.raises(ValueError, match="cannot be split"):
        held_out_split(["a.wav"], ["a.wav"], 0.5)


def test_the_folder_split_is_deterministic_disjoint_and_survives_moving_the_folder(my_wavs, tmp_path):
    cfg = folder_config(tmp_path / "run", f"data.train_dirs=[{my_wavs}]", "data.valid_fraction=0.3")
    files = data_files(cfg.data)
    relative = lambda paths: [p.relative_to(my_wavs).as_posix() for p in paths]  # noqa: E731
    # every audio file, hidden ones and non-audio skipped, each on exactly one side
    assert sorted(relative(files.train + files.valid)) == sorted(FOLDER_FILES)
    assert set(files.train).isdisjoint(files.valid) and files.train and files.valid
    expected = {k for k in FOLDER_FILES if split_value(k) < 0.3} or {min(FOLDER_FILES, key=split_value)}
    assert set(relative(files.valid)) == expected
    assert relative(files.train) == sorted(set(FOLDER_FILES) - expected)  # sorted by path
    # the same split again, with another seed, and after the folder moved to another machine's path
    assert data_files(folder_config(tmp_path / "run", f"data.train_dirs=[{my_wavs}]", "data.valid_fraction=0.3",
                                    "train.seed=5").data) == files
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(my_wavs, moved)
    again = data_files(folder_config(tmp_path / "run", f"data.train_dirs=[{moved}]", "data.valid_fraction=0.3").data)
    assert [p.relative_to(moved).as_posix() for p in again.valid] == relative(files.valid)
    # the default fraction still holds out one file (0.05 of six files rounds to none)
    default = data_files(folder_config(tmp_path / "run", f"data.train_dirs=[{my_wavs}]").data)
    assert len(default.valid) >= 1 and len(default.train) + len(default.valid) == len(FOLDER_FILES)


# ------------------------------------------------------------------------------------------ training


def test_trains_and_validates_on_a_plain_folder_of_wavs(my_wavs, tmp_path):
    run_dir = tmp_path / "run"
    cfg = folder_config(run_dir, f"data.train_dirs=[{my_wavs}]", "data.valid_fraction=0.3", "train.steps=3",
                        "train.valid_every=3", "train.ckpt_every=3", "train.log_every=1", "optim.lr=3e-3")
    trainer = Trainer(cfg, show_progress=False)
    train_files, valid_files = trainer.train_set.files, trainer.valid_set.files
    assert set(train_files).isdisjoint(valid_files) and len(train_files) + len(valid_files) == len(FOLDER_FILES)
    # every file is read at the codec's rate: the 44.1 kHz file is resampled, the stereo one averaged
    for index, path in enumerate(train_files):
        info = soundfile.info(path)
        assert trainer.train_set.num_samples(index) == math.ceil(info.frames * 16000 / info.samplerate)
    summary = trainer.fit()
    assert summary["step"] == 3 and summary["skipped"] == 0

    log = read_log(run_dir)
    train = [r for r in log if r["kind"] == "train"]
    (valid,) = [r for r in log if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(math.isfinite(r["loss/generator"]) for r in train)
    assert valid["step"] == 3
    for kbps in ("0.6", "1.2"):  # scored on the held-out files
        assert math.isfinite(valid[f"valid/{kbps}kbps/mel"]) and math.isfinite(valid[f"valid/{kbps}kbps/si_sdr"])
    examples = sorted(p.name for p in (run_dir / "samples" / "step_0000003").iterdir())
    held_stems = {Path(p).stem for p in valid_files}
    assert examples and {name.rsplit("_", 1)[0] for name in examples} <= held_stems
    codec = Codec.load(run_dir / "codec.pt")
    assert codec.config == trainer.codec_module.config
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["train_dirs"] == [str(my_wavs)] and saved["data"]["train_subsets"] == []


def test_a_list_file_with_a_separate_validation_folder(my_wavs, speech_root, tmp_path):
    # The list lives in its own folder: relative entries are relative to it, not to the working folder.
    lists = tmp_path / "lists"
    lists.mkdir()
    relative = os.path.relpath(my_wavs / "alice" / "a1.wav", lists)
    assert relative.startswith("..") and not (Path.cwd() / relative).exists()
    entries = ["# my training audio", "", relative, str(my_wavs / "bob" / "b2_44k.wav"),
               "  " + str(my_wavs / "alice" / "session2" / "a3.flac") + "  "]
    (lists / "train.txt").write_text("\n".join(entries) + "\n")
    valid_dir = tmp_path / "valid"
    valid_dir.mkdir()
    soundfile.write(valid_dir / "v1.wav", cut_speech(speech_root, 12), 16000)
    soundfile.write(valid_dir / "v2.wav", cut_speech(speech_root, 13)[:16000], 16000)
    # also a folder: a file that is both in the folder and in the list is trained on once
    run_dir = tmp_path / "run"
    cfg = folder_config(run_dir, f"data.train_list={lists / 'train.txt'}", f"data.valid_dirs=[{valid_dir}]",
                        f"data.train_dirs=[{my_wavs / 'bob'}]", "train.steps=2", "train.valid_every=2",
                        "train.ckpt_every=2", "data.preload=true")
    trainer = Trainer(cfg, show_progress=False)
    expected_train = [my_wavs / "bob" / "b1.wav", my_wavs / "bob" / "b2_44k.wav",  # the folder, sorted
                      my_wavs / "alice" / "a1.wav", my_wavs / "alice" / "session2" / "a3.flac"]  # then the list
    assert [p.resolve() for p in trainer.train_set.files] == [p.resolve() for p in expected_train]
    assert trainer.valid_set.files == [valid_dir / "v1.wav", valid_dir / "v2.wav"]
    assert trainer.data_files.valid_source == "data.valid_dirs"
    trainer.fit()
    (valid,) = [r for r in read_log(run_dir) if r["kind"] == "valid"]
    assert math.isfinite(valid["valid/mel"])
    assert sorted(p.name for p in (run_dir / "samples" / "step_0000002").glob("*_ref.wav")) == ["v1_ref.wav",
                                                                                               "v2_ref.wav"]
    assert (run_dir / "codec.pt").is_file()


# ------------------------------------------------------------------------------------------ mistakes


def test_data_mistakes_are_one_line_errors_before_anything_is_written(my_wavs, speech_root, tmp_path, capsys):
    run_dir = tmp_path / "r"
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    soundfile.write(empty / ".hidden" / "x.wav", np.zeros(1600, dtype=np.float32), 16000)
    (empty / "readme.txt").write_text("no audio here")
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(my_wavs / "alice" / "a1.wav", single / "only.wav")
    broken = tmp_path / "broken"
    shutil.copytree(my_wavs / "alice", broken)
    (broken / "bad.wav").write_text("this is not a wav file")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{my_wavs / 'alice' / 'a1.wav'}\n\nmissing/clip.wav\n")
    folder_list = tmp_path / "folder-list.txt"
    folder_list.write_text(f"{my_wavs / 'alice'}\n")
    blank_list = tmp_path / "blank.txt"
    blank_list.write_text("# nothing yet\n\n")
    base = ["train", str(TINY_RECIPE), "data.root=", "data.train_subsets=[]", f"train.run_dir={run_dir}", *SMALL]
    cases = [
        ([], "config key 'data.train_dirs': no training audio: give folders of audio (data.train_dirs=[my_wavs])"),
        ([f"data.train_dirs=[{tmp_path / 'nowhere'}]"], f"config key 'data.train_dirs': audio folder not found: "
                                                        f"{tmp_path / 'nowhere'}"),
        ([f"data.train_dirs=[{empty}]"], "config key 'data.train_dirs': no audio files (.wav, .flac"),
        ([f"data.train_list={tmp_path / 'nope.txt'}"], "config key 'data.train_list': list file not found"),
        ([f"data.train_list={listed}"], f"config key 'data.train_list': {listed} line 3: no such file: "
                                        f"{tmp_path / 'missing' / 'clip.wav'}"),
        ([f"data.train_list={folder_list}"], "line 1: is a folder, not an audio file"),
        ([f"data.train_list={blank_list}"], "names no audio file"),
        ([f"data.train_dirs=[{single}]"], "config key 'data.valid_fraction': nothing left for validation: the "
                                          "training audio is 1 file"),
        ([f"data.train_dirs=[{my_wavs}]", f"data.valid_dirs=[{my_wavs / 'bob'}]"],
         "config key 'data.valid_dirs': 2 validation files are also trained on"),
        ([f"data.train_dirs=[{single}]", f"data.valid_dirs=[{empty}]"], "config key 'data.valid_dirs': no audio files"),
        ([f"data.train_dirs=[{my_wavs}]", "data.valid_fraction=1"],
         "config key 'data.valid_fraction': must be between 0 and 1"),
        ([f"data.train_dirs=[{broken}]"], f"{broken / 'bad.wav'}"),
        (["data.train_subsets=[train-clean-100]"], "config key 'data.root': must name the folder that contains "
                                                   "LibriSpeech/"),
        ([f"data.root={tmp_path / 'no-libri'}", "data.train_subsets=[train-clean-100]", "data.valid_subset=dev-clean"],
         "LibriSpeech root not found"),
    ]
    for extra, needle in cases:
        assert cli.main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("rvqcodec train: error:") and needle in err, (extra, err)
        assert "\n" not in err and "Traceback" not in err, err
    assert not run_dir.exists()  # nothing written for a refused run


def test_librispeech_recipes_keep_their_data(speech_root, tmp_path):
    """A LibriSpeech recipe reads exactly what it read before: its subsets plus its extra folders for training,
    its validation subset for validation; a folder added with data.train_dirs joins the training files."""
    extra = tmp_path / "extra"
    extra.mkdir()
    soundfile.write(extra / "x.wav", cut_speech(speech_root, 3), 16000)
    cfg = load_config(REPO_ROOT / "recipes" / "librispeech" / "convnext.yaml", [
        f"data.root={speech_root}", f"data.extra_train_dirs=[{extra}]", f"data.train_dirs=[{extra}]"])
    files = data_files(cfg.data)
    libri = speech_root / "LibriSpeech"
    assert files.train == [*sorted((libri / "train-clean-100").glob("*/*/*.flac")), extra / "x.wav"]
    assert files.valid == sorted((libri / "dev-clean").glob("*/*/*.flac"))
    assert files.valid_source == "data.valid_subset=dev-clean"


# ------------------------------------------------------------------------------------------ the fine-tune recipe


def test_the_finetune_recipe_resolves_and_starts_from_the_shipped_model(my_wavs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the recipe's train.init_from is relative to the repository root, as documented
    assert cli.main(["train", str(FINETUNE_RECIPE), f"data.train_dirs=[{my_wavs}]", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["preset"] == "convnext" and printed["model"]["quantizer_dropout"] == 1.0
    assert {k: printed["loss"][k] for k in ("mel", "complex", "mrstft", "adv", "fm")} == {
        "mel": 15.0, "complex": 10.0, "mrstft": 1.0, "adv": 0.0, "fm": 0.0}
    assert printed["train"]["init_from"] == "rvqcodec/pretrained/default.pt"
    assert printed["train"]["ae_warmup_steps"] == 0 and printed["train"]["kmeans_init_seconds"] == 0
    assert printed["train"]["steps"] == 2000 and printed["optim"]["lr"] == 1e-4 and printed["optim"]["warmup_steps"] > 0
    assert printed["data"]["train_dirs"] == [str(my_wavs)] and printed["data"]["train_subsets"] == []
    assert printed["data"]["valid_dirs"] == []  # validation: the held-out split

    run_dir = tmp_path / "mine"
    cfg = load_config(FINETUNE_RECIPE, [
        f"data.train_dirs=[{my_wavs}]", f"train.run_dir={run_dir}", "train.steps=1", "data.batch_size=2",
        "data.max_valid_files=1", "data.max_valid_seconds=2", "train.valid_pesq=false", "train.tensorboard=false",
        "train.n_samples=0"])
    trainer = Trainer(cfg, show_progress=False)
    shipped = Codec.load(SHIPPED)
    start = {k: v.clone() for k, v in trainer.codec_module.state_dict().items()}
    for name, value in shipped.state_dict().items():  # the shipped weights and codebooks, no new k-means
        assert torch.equal(start[name], value), name
    assert trainer._codebooks_ready() and trainer.clips is not None  # preloaded
    assert set(trainer.train_set.files).isdisjoint(trainer.valid_set.files) and len(trainer.valid_set.files) >= 1
    summary = trainer.fit()
    assert summary["step"] == 1 and summary["skipped"] == 0
    assert any(not torch.equal(start[k], v) for k, v in trainer.codec_module.state_dict().items())  # it learned
    (valid,) = [r for r in read_log(run_dir) if r["kind"] == "valid"]
    assert all(math.isfinite(valid[f"valid/{kbps:g}kbps/mel"]) for kbps in (1.5, 3.0, 6.0))
    tuned = Codec.read_checkpoint(run_dir / "codec.pt")
    assert tuned["meta"]["lineage"]["steps"] == Codec.read_checkpoint(SHIPPED)["meta"]["lineage"]["steps"] + 1
    assert Codec.load(run_dir / "codec.pt").config.n_q == shipped.config.n_q
