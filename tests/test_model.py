"""Behaviour of the SEANet encoder/decoder and the Codec: shapes, prefix decoding, bitrates, checkpoints,
model identity, gradient flow and a short overfitting run on real speech."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import soundfile as sf
import torch

from rvqcodec.losses import ReconstructionLoss
from rvqcodec.model import Codec, CodecConfig, SEANetDecoder, SEANetEncoder

HOP = 320


def small_config(**overrides) -> CodecConfig:
    """The tiny architecture with a small quantizer, for fast tests that do not depend on bitrates."""
    base = dict(n_q=4, codebook_size=32, quantizer_dropout=0.0)
    base.update(overrides)
    return CodecConfig.preset("tiny", **base)


def initialised_codec(config: CodecConfig, frames: int = 50) -> Codec:
    """A codec whose codebooks are k-means initialised (one training forward on 8 x ``frames`` frames, many more
    than codes, so that no stage fits its residuals exactly), returned in eval mode."""
    codec = Codec(config)
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(8, 1, frames * codec.hop_length))
    return codec.eval()


@pytest.fixture(scope="module")
def speech_clip(speech_root) -> torch.Tensor:
    path = sorted((speech_root / "LibriSpeech" / "train-clean-100").rglob("*.flac"))[0]
    audio, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    return torch.from_numpy(audio[16000:24000]).view(1, 1, -1)  # 0.5 s of speech


@pytest.mark.parametrize("length", [1, 319, 320, 321, 4801, 16001])
def test_encoder_decoder_shapes_for_any_length(length):
    enc, dec = SEANetEncoder(channels=4, latent_dim=16), SEANetDecoder(channels=4, latent_dim=16)
    z = enc(torch.randn(2, 1, length))
    frames = math.ceil(length / HOP)
    assert z.shape == (2, 16, frames)
    assert dec(z).shape == (2, 1, frames * HOP)


def test_encoder_rejects_non_mono():
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        SEANetEncoder(channels=4, latent_dim=8)(torch.randn(2, 2, 640))


def test_encoder_is_local_and_batch_independent():
    # Changing the end of one item must not change the start of its latents, nor the other item.
    enc = SEANetEncoder(channels=4, latent_dim=8).eval()
    x = torch.randn(2, 1, 32 * HOP)
    y = x.clone()
    y[0, 0, -HOP:] += 1.0
    zx, zy = enc(x), enc(y)
    assert torch.equal(zx[1], zy[1])
    assert torch.allclose(zx[0, :, :16], zy[0, :, :16])
    assert not torch.allclose(zx[0, :, -1], zy[0, :, -1])


@pytest.mark.parametrize("length", [1, 333, 6400, 8011])
def test_codec_forward_keeps_length(length):
    codec = Codec(small_config())
    out = codec(0.1 * torch.randn(2, 1, length))
    assert out.audio.shape == (2, 1, length)
    assert out.codes.shape == (2, 4, math.ceil(length / HOP))
    assert out.codes.dtype == torch.int64 and out.n_q == 4
    assert out.commit_loss.ndim == 0 and torch.isfinite(out.commit_loss)


def test_codec_rejects_bad_audio_shape():
    codec = Codec(small_config())
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        codec(torch.randn(2, 640))
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        codec.encode(torch.randn(2, 1, 0))


def test_encode_decode_shapes_and_every_prefix_decodes():
    codec = initialised_codec(small_config(n_q=6))
    wav = 0.1 * torch.randn(2, 1, 5 * HOP + 17)
    with torch.no_grad():
        codes = codec.encode(wav)
        assert codes.shape == (2, 6, 6) and codes.dtype == torch.int64
        assert int(codes.min()) >= 0 and int(codes.max()) < 32
        decoded = []
        for k in range(1, 7):
            # RVQ codes of fewer stages are exactly a prefix of the full codes.
            assert torch.equal(codec.encode(wav, n_q=k), codes[:, :k])
            audio = codec.decode(codes[:, :k])
            assert audio.shape == (2, 1, 6 * HOP)
            assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0
            decoded.append(audio)
    # Each extra stage changes the decoded latent (hence, generically, the audio).
    for a, b in zip(decoded, decoded[1:]):
        assert not torch.equal(a, b)


def test_forward_matches_encode_then_decode_in_eval():
    codec = initialised_codec(small_config())
    wav = 0.1 * torch.randn(1, 1, 3 * HOP)
    with torch.no_grad():
        out = codec(wav, n_q=3)
        codes = codec.encode(wav, n_q=3)
        audio = codec.decode(codes)
    assert torch.equal(out.codes, codes)
    assert torch.allclose(out.audio.clamp(-1, 1), audio[..., : wav.shape[-1]], atol=1e-6)


def test_decode_rejects_bad_codes():
    codec = initialised_codec(small_config())
    with pytest.raises(ValueError, match="integer"):
        codec.decode(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError):
        codec.decode(torch.full((1, 2, 3), 32, dtype=torch.long))  # K = 32: codes are 0..31
    with pytest.raises(ValueError):
        codec.decode(torch.zeros(1, 5, 3, dtype=torch.long))  # more stages than the model has
    with pytest.raises(ValueError, match="n_q"):
        codec.encode(torch.zeros(1, 1, HOP), n_q=5)


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_bitrate_table(preset):
    codec = Codec(CodecConfig.preset(preset))
    assert codec.sample_rate == 16000 and codec.hop_length == 320 and codec.frame_rate == 50.0
    assert codec.max_n_q == 16 and codec.bits_per_code == 10
    assert codec.bitrate(6) == pytest.approx(3.0)
    assert codec.bitrate(1) == pytest.approx(0.5)
    assert codec.bitrate(16) == pytest.approx(8.0)
    assert codec.bitrates() == pytest.approx([0.5 * n for n in range(1, 17)])
    for n in range(1, 17):
        assert codec.n_q_for_bitrate(0.5 * n) == n
    assert codec.n_q_for_bitrate(3) == 6


@pytest.mark.parametrize("kbps", [0, 0.25, 3.2, 8.5, -1])
def test_n_q_for_bitrate_lists_valid_bitrates(kbps):
    codec = Codec(small_config(n_q=16, codebook_size=1024))
    with pytest.raises(ValueError) as info:
        codec.n_q_for_bitrate(kbps)
    message = str(info.value)
    assert "0.5, 1, 1.5, 2" in message and message.rstrip().endswith("7.5, 8")


def test_bitrate_rejects_bad_n_q():
    codec = Codec(small_config())
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="n_q"):
            codec.bitrate(bad)


def test_config_dict_round_trip_and_errors():
    config = CodecConfig.preset("tiny", scale_clamp=(0.5, 2.0), codebook_dim=8)
    data = json.loads(json.dumps(config.to_dict()))  # JSON-safe
    assert CodecConfig.from_dict(data) == config
    assert CodecConfig.from_dict({}) == CodecConfig()  # missing keys take defaults
    with pytest.raises(ValueError, match="bogus_key"):
        CodecConfig.from_dict({**data, "bogus_key": 1})
    with pytest.raises(ValueError, match="unknown codec preset 'huge'"):
        CodecConfig.preset("huge")
    with pytest.raises(ValueError, match="quantizer_dropout"):
        CodecConfig(quantizer_dropout=1.5)
    with pytest.raises(ValueError, match="quantizer_dropout_skew must be >= 0"):
        CodecConfig(quantizer_dropout_skew=-1.0)
    assert CodecConfig.preset("tiny").hop_length == CodecConfig.preset("base").hop_length == 320


def test_save_load_round_trip_is_exact(tmp_path):
    codec = initialised_codec(small_config())
    path = codec.save(tmp_path / "model.pt", meta={"step": 12})
    loaded = Codec.load(path)
    assert not loaded.training
    assert loaded.config == codec.config
    assert loaded.model_id == codec.model_id
    wav = 0.1 * torch.randn(2, 1, 4 * HOP + 5)
    with torch.no_grad():
        a, b = codec(wav), loaded(wav)
        assert torch.equal(a.codes, b.codes)
        assert torch.equal(a.audio, b.audio)
        assert torch.equal(codec.decode(a.codes), loaded.decode(a.codes))
    payload = Codec.read_checkpoint(path)
    assert payload["format"] == "rvqcodec-checkpoint" and payload["version"] == 1
    assert payload["meta"]["step"] == 12 and payload["meta"]["model_id"] == codec.model_id
    # Atomic write left no temp files behind; saving again replaces the file.
    codec.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_model_id_tracks_weights_and_codebooks():
    codec = initialised_codec(small_config())
    model_id = codec.model_id
    assert len(model_id) == 16 and model_id == model_id.lower() and bytes.fromhex(model_id)
    assert codec.model_id == model_id  # stable
    with torch.no_grad():
        codec(0.1 * torch.randn(1, 1, 2 * HOP))  # inference does not change the identity
    assert codec.model_id == model_id
    with torch.no_grad():
        codec.decoder.model[-1].conv.parametrizations.weight.original1[0, 0, 0] += 1e-3
    changed = codec.model_id
    assert changed != model_id
    with torch.no_grad():
        codec.quantizer.layers[2].codebook.embed[5, 0] += 1e-3
    assert codec.model_id not in (model_id, changed)
    other = Codec(small_config(latent_dim=32))
    assert other.model_id != Codec(small_config()).model_id


def _hashed_afresh(codec: Codec) -> str:
    """The id of ``codec``'s current weights, computed by a new model that has no cached id."""
    copy = Codec(codec.config)
    copy.load_state_dict(codec.state_dict())
    return copy.model_id


def test_cached_model_id_follows_every_kind_of_weight_change(monkeypatch):
    """model_id is hashed once per state (a short utterance's compress would otherwise pay ~25 ms); every way
    the weights change must still give the id of the new weights."""
    torch.manual_seed(0)
    codec = Codec(small_config(dead_code_patience=1)).eval()  # codebooks not initialised yet
    ids = [codec.model_id]

    hashes = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr("rvqcodec.model.codec.hashlib.sha256", lambda *a: hashes.append(1) or real_sha256(*a))
    assert codec.model_id == ids[0] and hashes == []  # cached: nothing hashed again

    def changed() -> str:
        new = codec.model_id
        assert new not in ids and new == _hashed_afresh(codec)
        ids.append(new)
        return new

    codec.initialize_codebooks(0.1 * torch.randn(4, 1, 50 * HOP))  # k-means writes, in eval mode
    changed()
    codec.train()
    with torch.no_grad():  # EMA update + dead-code replacement (idle for one step) write codebooks via .data
        codec(0.1 * torch.randn(2, 1, 10 * HOP))
    codec.eval()
    changed()
    optimizer = torch.optim.SGD(codec.parameters(), lr=1e-2)
    codec(0.1 * torch.randn(1, 1, 4 * HOP)).audio.square().mean().backward()
    optimizer.step()
    changed()
    codec.half().float()  # new storages that could land where the old ones were
    changed()
    codec.load_state_dict(initialised_codec(small_config(dead_code_patience=1)).state_dict())
    changed()
    with torch.inference_mode():  # tensors without version counters: hashed every time, still right
        fresh = Codec(small_config())
        assert fresh.model_id == fresh.model_id == _hashed_afresh(fresh)


def test_load_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Codec.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="not an rvqcodec checkpoint"):
        Codec.load(garbage)
    good = Codec(small_config()).save(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not an rvqcodec checkpoint"):
        Codec.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="format tag"):
        Codec.load(foreign)
    payload = torch.load(good, weights_only=True)
    payload["version"] = 99
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(ValueError, match="version 99"):
        Codec.load(future)
    payload["version"] = 1
    payload["config"]["latent_dim"] = 32  # weights no longer match the config
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload, mismatched)
    with pytest.raises(ValueError, match="do not match"):
        Codec.load(mismatched)


def test_reconstruction_loss_gradient_reaches_encoder(speech_clip):
    codec = Codec(small_config()).train()
    out = codec(speech_clip)
    terms = ReconstructionLoss()(out.audio, speech_clip)
    (terms["total"] + out.commit_loss).backward()
    first = codec.encoder.model[0].conv.parametrizations.weight
    last = codec.decoder.model[-1].conv.parametrizations.weight
    for param in (first.original0, first.original1, last.original1):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_tiny_codec_overfits_one_clip(speech_clip):
    codec = Codec(small_config(codebook_size=64)).train()
    loss_fn = ReconstructionLoss()
    opt = torch.optim.Adam(codec.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        out = codec(speech_clip)
        recon = loss_fn(out.audio, speech_clip)["total"]
        opt.zero_grad()
        (recon + out.commit_loss).backward()
        opt.step()
        losses.append(recon.item())
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses


def test_inference_only_checkpoint_is_smaller_and_decodes_identically(tmp_path):
    codec = initialised_codec(small_config())
    full = codec.save(tmp_path / "full.pt")
    slim = codec.save(tmp_path / "slim.pt", inference_only=True)
    assert slim.stat().st_size < full.stat().st_size
    a, b = Codec.load(full), Codec.load(slim)
    assert a.model_id == b.model_id == codec.model_id
    wav = torch.randn(1, 1, 3200) * 0.1
    codes = a.encode(wav)
    assert torch.equal(codes, b.encode(wav))
    assert torch.equal(a.decode(codes), b.decode(codes))
    for la, lb in zip(a.quantizer.layers, b.quantizer.layers):  # EMA sums rebuilt from codes and usage
        expected = la.codebook.embed * la.codebook.cluster_size.unsqueeze(-1)
        assert torch.allclose(lb.codebook.embed_sum, expected)
    b.train()(wav)  # still trains
