"""``rvqcodec export``: a run (folder, codec.pt or training checkpoint) becomes a small inference checkpoint, or the
shipped model with its card, with the run's own training facts; mistakes are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rvqcodec.cli import main
from rvqcodec.model import Codec, CodecConfig
from rvqcodec.training.trainer import Trainer

from test_train import make_config


@pytest.fixture(scope="module")
def run_dir(speech_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "run"
    Trainer(make_config(speech_root, folder, "train.steps=2", "train.ckpt_every=2", "train.valid_every=2",
                        "loss.mel=7.5", "loss.adv=0", "loss.fm=0"), show_progress=False).fit()
    return folder


def test_a_run_exports_as_a_float16_inference_checkpoint_with_its_facts(run_dir, tmp_path, capsys):
    out = tmp_path / "small.pt"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert "model id" in capsys.readouterr().out
    payload = Codec.read_checkpoint(out)
    meta = payload["meta"]
    assert all(v.dtype in (torch.float16, torch.int64, torch.long, torch.bool) or not v.is_floating_point()
               for v in payload["state_dict"].values())
    assert Codec.load(out).model_id == meta["model_id"]  # the id of the weights as written (float16-rounded)
    assert meta["steps"] == 2 and meta["losses"].startswith("mel 7.5")  # from the run's own config.yaml
    assert out.stat().st_size < (run_dir / "checkpoints" / "step_0000002.pt").stat().st_size / 2
    # the training checkpoint of the same step holds the same weights: the same exported model
    from_state = tmp_path / "from_state.pt"
    assert main(["export", str(run_dir / "checkpoints" / "step_0000002.pt"), str(from_state)]) == 0
    assert Codec.read_checkpoint(from_state)["meta"]["model_id"] == meta["model_id"]
    full = tmp_path / "full.pt"
    assert main(["export", str(run_dir), str(full), "--float32"]) == 0
    assert Codec.load(full).model_id == Codec.load(run_dir / "codec.pt").model_id  # float32: the run's own model


def test_as_default_writes_the_model_and_a_card_that_names_it(run_dir, tmp_path, capsys):
    out = tmp_path / "pretrained" / "default.pt"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "librispeech" / "tiny.yaml"
    assert main(["export", str(run_dir), str(out), "--as-default", "--recipe", str(recipe), "--note", "A test."]) == 0
    card = json.loads((out.parent / "default.json").read_text())
    assert card["model_id"] == Codec.read_checkpoint(out)["meta"]["model_id"] == Codec.load(out).model_id
    assert card["recipe"] == "recipes/librispeech/tiny.yaml" and card["description"].endswith("A test.")
    assert card["steps"] == 2 and "mel 7.5" in card["losses"] and card["training_data"]


def test_as_streaming_writes_a_causal_model_and_its_card_and_refuses_one_with_look_ahead(run_dir, tmp_path, capsys):
    causal_run = tmp_path / "causal"
    (causal_run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    Codec(CodecConfig.preset("convnext-causal", frame_dim=32, encoder_blocks=1, decoder_blocks=1)).save(
        causal_run / "codec.pt")
    out = tmp_path / "pretrained" / "streaming.pt"
    assert main(["export", str(causal_run / "codec.pt"), str(out), "--as-streaming", "--note", "Causal."]) == 0
    card = json.loads((out.parent / "streaming.json").read_text())
    assert card["model_id"] == Codec.load(out).model_id and card["description"].endswith("Causal.")
    assert not (out.parent / "default.json").exists()
    assert main(["export", str(run_dir), str(tmp_path / "s.pt"), "--as-streaming"]) == 2  # SEANet: look-ahead
    assert "must be causal" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


def test_mistakes_are_one_line(run_dir, tmp_path, capsys):
    for argv in (["export", str(tmp_path / "absent")], ["export", str(run_dir), str(run_dir / "codec.pt")],
                 ["export", str(Path(__file__))], ["export", str(run_dir), "--recipe", str(tmp_path / "no.yaml")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    out = tmp_path / "x.pt"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert main(["export", str(run_dir), str(out)]) == 2  # exists: refused without --force
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(out), "--force"]) == 0
