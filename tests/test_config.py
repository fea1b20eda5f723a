"""Training config: YAML + key=value overrides, typing, clear errors, resolved round trip."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from rvqcodec.training.config import (
    TrainConfig,
    codec_config_from_section,
    discriminator_config_from_section,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)
from rvqcodec.model.codec import Codec, CodecConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes" / "librispeech"


def write_yaml(path: Path, tree) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_without_a_file_are_valid():
    cfg = load_config(None)
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.valid_subset == "dev-clean" and cfg.data.valid_subset not in cfg.data.train_subsets
    assert cfg.train.valid_bitrates == [1.5, 3.0, 6.0]
    assert cfg.codec_config == CodecConfig.preset("tiny")


def test_the_config_holds_its_codec_and_discriminator_configs_resolved_once():
    cfg = load_config(None, ["model.codebook_size=64", "disc.stft_channels=4"])
    assert cfg.codec_config == codec_config_from_section(cfg.model) and cfg.codec_config.codebook_size == 64
    assert cfg.disc_config == discriminator_config_from_section(cfg.disc) and cfg.disc_config.stft_channels == 4
    assert cfg.codec_config is cfg.codec_config and cfg.disc_config is cfg.disc_config  # resolved once
    assert config_to_dict(cfg)["model"] == {"preset": "tiny", **cfg.codec_config.to_dict()}


def test_overrides_are_typed_from_the_field_types(tmp_path):
    cfg_file = write_yaml(tmp_path / "r.yaml", {"train": {"steps": 5}, "data": {"batch_size": 4}})
    cfg = load_config(
        cfg_file,
        [
            "train.steps=100",
            "optim.lr=1e-3",  # YAML would read this as a string; the float field types it
            "train.resume=true",
            "train.valid_bitrates=[1.5,6]",
            "data.train_subsets=train-clean-100,train-clean-360",
            "optim.grad_clip=null",
            "data.root=/x/y",
            "train.run_dir=123",  # a str field keeps the text
            "model.n_q=4",
        ],
    )
    assert cfg.train.steps == 100 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.resume is True
    assert cfg.train.valid_bitrates == [1.5, 6.0] and all(isinstance(b, float) for b in cfg.train.valid_bitrates)
    assert cfg.data.train_subsets == ["train-clean-100", "train-clean-360"]
    assert cfg.optim.grad_clip is None
    assert cfg.data.root == "/x/y" and cfg.train.run_dir == "123"
    assert cfg.data.batch_size == 4  # from the file, untouched
    codec_cfg = cfg.codec_config
    assert codec_cfg.n_q == 4 and isinstance(codec_cfg.n_q, int)


def test_model_preset_plus_fields_from_yaml(tmp_path):
    cfg_file = write_yaml(tmp_path / "r.yaml", {"model": {"preset": "tiny", "codebook_size": 64}})
    cfg = load_config(cfg_file)
    resolved = cfg.codec_config
    expected = dataclasses.replace(CodecConfig.preset("tiny"), codebook_size=64)
    assert resolved == expected


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.stepz=3", "unknown config key 'train.stepz' (did you mean 'train.steps'?)"),
        ("trian.steps=3", "unknown config key 'trian'"),
        ("model.n_qq=3", "unknown config key 'model.n_qq'"),
        ("train.steps=abc", "config key 'train.steps': expected an integer, got 'abc'"),
        ("train.steps=1.5", "config key 'train.steps': expected an integer"),
        ("train.resume=maybe", "config key 'train.resume': expected true/false"),
        ("optim.lr=-1", "config key 'optim.lr': must be > 0"),
        ("train.mixed_precision=fp8", "config key 'train.mixed_precision': must be one of no, bf16, fp16"),
        ("loss.adv_kind=wgan", "config key 'loss.adv_kind': must be one of hinge, lsgan"),
        ("data.train_subsets=dev-clean", "must not be one of data.train_subsets"),
        ("model.preset=huge", "config key 'model.preset'"),
        ("train.steps", "bad override 'train.steps': expected key=value"),
        ("train.steps.x=3", "config key 'train.steps'"),
    ],
)
def test_bad_keys_and_values_give_one_line_errors(override, needle):
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(broken)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config(not_mapping)


def test_saved_config_is_complete_and_reloads_to_the_same_config(tmp_path):
    cfg = load_config(None, ["model.n_q=4", "train.steps=7", "optim.betas=[0.5,0.9]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    # every CodecConfig field is written, so the file rebuilds the model even if presets change later
    assert set(f.name for f in dataclasses.fields(CodecConfig)) <= set(saved["model"])
    again = load_config(path)
    assert again.codec_config == cfg.codec_config
    assert config_to_dict(again) == config_to_dict(cfg)
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_parse_override_keeps_equals_signs_in_the_value():
    assert parse_override("data.root=/a=b") == ("data.root", "/a=b")


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_load(recipe):
    """Every recipe in recipes/librispeech (tiny, base, gpu-short, cpu-default, ...) parses, validates and builds
    its model and discriminator configs; each names its data folder (the library default is only ./data)."""
    path = RECIPES / recipe
    cfg = load_config(path)
    codec = Codec(cfg.codec_config)
    assert codec.max_n_q >= 1 and codec.bitrates()
    assert cfg.disc_config is not None
    assert cfg.train.steps > 0 and cfg.train.run_dir
    assert "root" in (yaml.safe_load(path.read_text()).get("data") or {}), f"{recipe} does not set data.root"
    assert all(b in codec.bitrates() or any(abs(b - r) < 1e-6 for r in codec.bitrates())
               for b in cfg.train.valid_bitrates), (recipe, cfg.train.valid_bitrates)


def test_the_library_default_data_folder_stays_inside_the_working_folder():
    """Without a recipe the data is looked for in ./data, not in a folder beside this repository's checkout."""
    root = Path(load_config(None).data.root)
    assert not root.is_absolute() and ".." not in root.parts and "shared" not in root.parts
