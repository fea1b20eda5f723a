"""The frame-rate codec family: the STFT frame grid and its inverse, ConvNeXt blocks (causal and not), the
encoder/decoder shapes for any length, locality, determinism in eval, the convnext presets (speed/size budget
by parameter count), the compressed complex STFT loss and the model-id rule for configs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rvqcodec.losses import CompressedSTFTLoss
from rvqcodec.model import Codec, CodecConfig
from rvqcodec.model.codec import incompatible_fields
from rvqcodec.model.convnext import ConvNeXtBlock, ConvNeXtStack
from rvqcodec.model.framerate import FrameRateDecoder, FrameRateEncoder
from rvqcodec.model.spectral import ISTFTHead, STFTFeatures, frame_signal, istft_overlap_add, stft_frames

HOP = 320


def small_convnext(**overrides) -> CodecConfig:
    base = dict(frame_dim=32, encoder_blocks=1, decoder_blocks=2, n_q=4, codebook_size=32, quantizer_dropout=0.0,
                latent_dim=16, codebook_dim=8)
    base.update(overrides)
    return CodecConfig.preset("convnext", **base)


# ------------------------------------------------------------------------------------------ the frame grid


@pytest.mark.parametrize("causal", [False, True])
def test_frame_grid_places_each_window_on_its_block(causal):
    wav = torch.arange(1, 3 * HOP + 1, dtype=torch.float32).view(1, 1, -1)  # sample s has value s + 1
    frames = frame_signal(wav, n_fft=640, hop=HOP, causal=causal)
    assert frames.shape == (1, 3, 640)
    # frame t covers [t*hop + hop/2 - 320, ...) centred, or [(t+1)*hop - 640, (t+1)*hop) causal; zeros outside
    for t in range(3):
        first = (t + 1) * HOP - 640 if causal else t * HOP + HOP // 2 - 320
        expected = torch.tensor([s + 1.0 if 0 <= s < 3 * HOP else 0.0 for s in range(first, first + 640)])
        assert torch.equal(frames[0, t], expected)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_fft", [640, 1280])
def test_istft_overlap_add_inverts_a_known_stft(causal, n_fft):
    torch.manual_seed(1)
    wav = torch.randn(2, 1, 25 * HOP, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    spec = stft_frames(wav, window, HOP, causal)
    assert spec.shape == (2, 25, n_fft // 2 + 1)
    out = istft_overlap_add(spec, window, HOP, causal)
    assert out.shape == wav.shape
    # Centred windows cover every sample with enough weight. Causal ones leave the first sample (only Hann's zero
    # reaches it) and the last n_fft - hop, which only the tails of the last windows reach: the frames that would
    # complete them are still to come, and are counted as silent (they fade out as the window does).
    keep = slice(1, -(n_fft - HOP)) if causal else slice(None)
    torch.testing.assert_close(out[..., keep], wav[..., keep], rtol=0, atol=1e-9)
    if causal:
        tail = out[..., -(n_fft - HOP):] / wav[..., -(n_fft - HOP):]
        assert float(tail.max()) <= 1.0 + 1e-9 and float(tail[..., -1].max()) < 1e-3  # a fade to silence


@pytest.mark.parametrize("causal", [False, True])
def test_istft_overlap_add_never_amplifies_a_spectrum_error_much(causal):
    # A predicted spectrum is never exact: an error in it may reach the output at most ~1/min(window envelope)
    # times over, at the signal's edges too. Dividing by the causal tail's own squared window (down to 1e-8)
    # multiplied it there by thousands, and a causal model trained on such output learnt to be quiet.
    torch.manual_seed(3)
    window = torch.hann_window(640, periodic=True, dtype=torch.float64)
    wav = torch.randn(1, 1, 40 * HOP, dtype=torch.float64)
    spec = stft_frames(wav, window, HOP, causal)
    error = 1e-3 * torch.randn_like(spec)
    diff = (istft_overlap_add(spec + error, window, HOP, causal) - istft_overlap_add(spec, window, HOP, causal)).abs()
    body = float(diff[..., 2 * HOP:-2 * HOP].max())
    assert float(diff.max()) <= 3 * body


def test_istft_head_decodes_the_spectrum_it_is_given():
    # A head whose linear map outputs log|X| and angle(X) of a known signal's frames reproduces that signal.
    torch.manual_seed(2)
    wav = torch.randn(1, 1, 10 * HOP)
    head = ISTFTHead(dim=4, n_fft=1280, hop=HOP, max_log_mag=20.0)
    spec = stft_frames(wav, head.window, HOP)
    bins = spec.shape[-1]
    target = torch.cat([spec.abs().clamp_min(1e-12).log(), spec.angle()], dim=-1)  # (1, F, 2·bins)
    with torch.no_grad():  # frames carry a one-hot code; the linear map holds every frame's answer
        frames = spec.shape[1]
        head.proj = torch.nn.Linear(frames, 2 * bins, bias=False)
        head.proj.weight.copy_(target[0].T)
    out = head(torch.eye(frames).unsqueeze(0))
    torch.testing.assert_close(out, wav, rtol=0, atol=2e-4)


def test_stft_features_are_level_robust_and_keep_phase():
    stem = STFTFeatures(640, HOP)
    torch.manual_seed(3)
    wav = 0.1 * torch.randn(1, 1, 8 * HOP)
    feats = stem(wav)
    bins = 321
    assert feats.shape == (1, 3 * bins, 8) and stem.out_dim == 3 * bins
    louder = stem(10.0 * wav)
    # log-magnitude shifts by log(10); the compressed complex part scales by 10^0.3 (phase unchanged)
    torch.testing.assert_close(louder[:, :bins] - feats[:, :bins], torch.full_like(feats[:, :bins], math.log(10.0)),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(louder[:, bins:], feats[:, bins:] * 10.0 ** 0.3, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(stem(-wav)[:, bins:], feats[:, bins:])  # the sign (phase) is seen


# ------------------------------------------------------------------------------------------ ConvNeXt blocks


def test_causal_block_and_stack_never_look_ahead():
    torch.manual_seed(4)
    stack = ConvNeXtStack(6, 16, n_blocks=3, out_dim=5, causal=True, in_kernel=3).eval()
    x = torch.randn(1, 6, 40)
    y = x.clone()
    y[..., 25:] += torch.randn(1, 6, 15)  # change the future from frame 25 on
    a, b = stack(x), stack(y)
    assert torch.equal(a[..., :25], b[..., :25])
    assert not torch.allclose(a[..., 25:], b[..., 25:])
    assert stack.receptive_field == 2 + 3 * 6


def test_non_causal_stack_sees_exactly_its_receptive_field():
    torch.manual_seed(5)
    stack = ConvNeXtStack(4, 8, n_blocks=2, causal=False, in_kernel=3).eval()
    half = stack.receptive_field // 2  # 1 + 2·3 = 7 frames each side
    x = torch.randn(1, 4, 60)
    y = x.clone()
    y[..., 30] += 1.0
    diff = (stack(x) - stack(y)).abs().amax(dim=1)[0]
    changed = torch.nonzero(diff > 0).flatten()
    assert changed.min() == 30 - half and changed.max() == 30 + half


def test_block_rejects_even_kernel_unless_causal():
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvNeXtBlock(8, kernel_size=6)
    assert ConvNeXtBlock(8, kernel_size=6, causal=True)(torch.randn(1, 8, 5)).shape == (1, 8, 5)


# ------------------------------------------------------------------------------------------ encoder / decoder


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 319, 320, 321, 4801, 16001])
def test_frame_rate_encoder_decoder_shapes_for_any_length(length, causal):
    arch = dict(hop=HOP, latent_dim=16, dim=32, n_blocks=1, mlp_ratio=3.0, kernel_size=7, causal=causal)
    enc, dec = FrameRateEncoder(stem_n_fft=640, **arch), FrameRateDecoder(head_n_fft=1280, **arch)
    z = enc(torch.randn(2, 1, length))
    frames = math.ceil(length / HOP)
    assert z.shape == (2, 16, frames)
    assert dec(z).shape == (2, 1, frames * HOP)


def test_causal_codec_output_does_not_depend_on_future_audio():
    # Encoder and decoder both causal: output sample s depends on input up to s + head_n_fft - hop + hop - 1
    # (the overlap-add of the frames still to come), never further.
    codec = Codec(small_convnext(causal=True, frame_kernel=4)).eval()
    with torch.no_grad():
        codec.quantizer.initialize(codec.encoder(0.1 * torch.randn(8, 1, 40 * HOP)))
        x = 0.1 * torch.randn(1, 1, 30 * HOP)
        y = x.clone()
        y[..., 20 * HOP:] = 0.1 * torch.randn(1, 1, 10 * HOP)
        a, b = codec.decode(codec.encode(x)), codec.decode(codec.encode(y))
    lookahead = codec.config.head_n_fft - HOP  # samples of frames after the changed one that reach back
    assert torch.equal(a[..., : 20 * HOP - lookahead], b[..., : 20 * HOP - lookahead])
    assert not torch.equal(a[..., 20 * HOP:], b[..., 20 * HOP:])


def test_convnext_codec_is_deterministic_in_eval_and_round_trips_through_a_checkpoint(tmp_path):
    codec = Codec(small_convnext())
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(8, 1, 50 * HOP))  # k-means init
    codec.eval()
    x = 0.1 * torch.randn(2, 1, 7777)
    codes = codec.encode(x)
    assert torch.equal(codes, codec.encode(x))
    audio = codec.decode(codes)
    assert torch.equal(audio, codec.decode(codes))
    codec.save(tmp_path / "c.pt")
    loaded = Codec.load(tmp_path / "c.pt")
    assert loaded.model_id == codec.model_id
    assert torch.equal(loaded.encode(x), codes) and torch.equal(loaded.decode(codes), audio)


def test_quantizer_bypass_is_a_plain_autoencoder():
    codec = Codec(small_convnext()).train()
    x = 0.1 * torch.randn(2, 1, 3000)
    out = codec(x, quantize=False)
    assert out.n_q == 0 and out.codes.shape == (2, 0, 10) and float(out.commit_loss) == 0.0
    assert not any(bool(layer.codebook.initialized) for layer in codec.quantizer.layers)  # untouched
    torch.testing.assert_close(out.audio, codec.decoder(codec.encoder(torch.nn.functional.pad(x, (0, 200))))[..., :3000])


def test_convnext_presets_fit_the_cpu_and_state_budgets():
    default = Codec(CodecConfig.preset("convnext"))
    counts = default.parameter_counts()
    # weights + two AdamW moments in float32, plus the EMA codebooks (embed and embed_sum): under 48 MiB
    codebook_bytes = sum(b.numel() * b.element_size() for n, b in default.named_buffers() if "codebook" in n)
    assert 12 * counts["total"] + codebook_bytes < 48 * 2**20
    assert default.hop_length == HOP and default.bitrates()[-1] == 8.0
    large = CodecConfig.preset("convnext-large")
    assert Codec(large).parameter_counts()["total"] > 20e6


@pytest.mark.parametrize("bad, message", [
    (dict(architecture="lstm"), "architecture"),
    (dict(architecture="convnext", head_n_fft=300), "head_n_fft"),
    (dict(architecture="convnext", stem_n_fft=641), "stem_n_fft"),
    (dict(architecture="convnext", frame_kernel=6), "odd frame_kernel"),
    (dict(rate_conditioning=True), "rate_conditioning needs architecture 'convnext'"),
])
def test_config_rejects_bad_frame_rate_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        CodecConfig(**bad)


def test_fields_added_later_change_the_model_id_only_when_set():
    a = CodecConfig.preset("tiny")
    assert "frame_dim" not in a.identity_dict()  # SEANet models keep the ids they had before the field existed
    b = CodecConfig.preset("convnext")
    assert b.identity_dict()["architecture"] == "convnext"
    torch.manual_seed(0)
    one = Codec(b)
    torch.manual_seed(0)
    two = Codec(CodecConfig.preset("convnext", frame_kernel=5))
    assert one.model_id != two.model_id


def test_rate_conditioning_starts_as_the_plain_decoder_and_then_decodes_each_prefix_with_its_own_row():
    torch.manual_seed(0)
    plain = Codec(small_convnext())
    with torch.no_grad():
        plain.train()(0.1 * torch.randn(8, 1, 50 * HOP))  # k-means init
    plain.eval()
    conditioned = Codec(small_convnext(rate_conditioning=True)).eval()
    missing, unexpected = conditioned.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["decoder.rate_film.weight"] and not unexpected
    assert conditioned.model_id != plain.model_id and "rate_conditioning" not in plain.config.identity_dict()
    x = 0.1 * torch.randn(2, 1, 4321)
    codes = plain.encode(x)
    for k in range(1, 5):  # zero rows: exactly the decoder it was
        assert torch.equal(conditioned.decode(codes[:, :k]), plain.decode(codes[:, :k]))
    with torch.no_grad():
        conditioned.decoder.rate_film.weight.normal_()
        latent = conditioned.quantizer.decode(codes[:, :3])
        dim = conditioned.config.frame_dim
        scale, shift = conditioned.decoder.rate_film.weight[3, :dim], conditioned.decoder.rate_film.weight[3, dim:]
        net = conditioned.decoder.net
        h = net.norm_in(net.proj_in(torch.nn.functional.pad(latent, net.in_padding)).transpose(1, 2)).transpose(1, 2)
        h = h * (1 + scale)[:, None] + shift[:, None]  # row 3 scales and shifts the first layer's output
        for block in net.blocks:
            h = block(h)
        by_hand = conditioned.decoder.head(net.proj_out(net.norm_out(h.transpose(1, 2))).transpose(1, 2))
        torch.testing.assert_close(conditioned.decode(codes[:, :3]), by_hand.clamp(-1, 1))
        assert not torch.allclose(conditioned.decode_latent(latent, 3), conditioned.decode_latent(latent, 4))
        # the warm-up's unquantized path is row 0
        out = conditioned(x, quantize=False)
        torch.testing.assert_close(out.audio, conditioned.decode_latent(out.latent, 0)[..., :4321])
    with pytest.raises(ValueError, match="needs n_q between 0 .unquantized. and 4"):
        conditioned.decoder(latent)
    with pytest.raises(ValueError, match="needs n_q between 0"):
        conditioned.decoder(latent, 5)


def test_init_compatibility_counts_a_field_an_old_checkpoint_lacks_as_its_default():
    wanted = CodecConfig.preset("convnext").to_dict()
    old = {k: v for k, v in wanted.items() if k not in ("rate_conditioning", "causal")}  # saved before they existed
    assert incompatible_fields(old, wanted) == []
    assert incompatible_fields(old, {**wanted, "rate_conditioning": True}) == []  # switched on: allowed
    assert incompatible_fields({**wanted, "rate_conditioning": True}, wanted) == ["rate_conditioning"]  # not off
    assert incompatible_fields(old, {**wanted, "causal": True, "frame_dim": 64}) == ["frame_dim"]  # causal: adapted


@pytest.mark.parametrize("saved, wanted, differ", [
    ("ema", "grad", []), ("ema", "transform", []), ("grad", "ema", []), ("grad", "transform", []),
    ("transform", "ema", ["codebook_learning"]), ("transform", "grad", ["codebook_learning"]),
])
def test_init_compatibility_across_codebook_learning(saved, wanted, differ):
    """EMA and gradient codebooks store the codes themselves, and a transform codebook takes them as its base with
    W = I: those may start from each other's weights; leaving a transform codebook would drop its W."""
    config = CodecConfig.preset("convnext").to_dict()
    assert incompatible_fields({**config, "codebook_learning": saved}, {**config, "codebook_learning": wanted}) == differ


def test_a_causal_model_starts_from_the_shipped_one_in_time_with_its_input(speech_root):
    """The streaming preset differs from the shipped model in padding side and head window only: its weights carry
    over, its centred kernels cut to their past and present taps, its head resampled onto the 640-point grid with
    the phase ramp that keeps each frame's content in place. Untrained, it decodes real speech in time with the input
    (waveform cross-correlation peaking at lag 0; measured 0.42) and closer to it than with the kernels used as they
    are (a 28-frame delay; measured mel distance 0.39 against 0.58) or with a fresh head (0.82)."""
    import soundfile as sf

    from rvqcodec.metrics import mel_distance
    from rvqcodec.model.codec import adapt_state_dict
    from rvqcodec.pretrained import load_codec

    shipped = load_codec().eval()
    causal_config = CodecConfig.preset("convnext-causal")
    assert incompatible_fields(shipped.config.to_dict(), causal_config.to_dict()) == []
    state, adapted = adapt_state_dict(shipped.state_dict(), shipped.config.to_dict(), causal_config.to_dict())
    cut = [name for name in adapted if name.endswith("dwconv.weight")]
    assert len(cut) == causal_config.encoder_blocks + causal_config.decoder_blocks
    assert "decoder.net.proj_in.weight" in adapted and "decoder.head.proj.bias" in adapted
    assert all(not state[name][..., :(causal_config.frame_kernel - 1) // 2].any() for name in cut)  # no stale taps
    assert state["decoder.head.proj.weight"].shape == (2 * 321, causal_config.frame_dim)
    clip = sorted((speech_root / "LibriSpeech" / "dev-clean").rglob("*.flac"))[0]
    audio, sr = sf.read(clip, dtype="float32", frames=8 * 16000)
    audio = 0.5 * audio / np.abs(audio).max()
    as_saved = {**state, **{name: shipped.state_dict()[name] for name in cut + ["decoder.net.proj_in.weight"]}}
    fresh_head = {k: v for k, v in state.items() if not k.startswith("decoder.head.proj")}
    decoded = {}
    for variant, weights in (("adapted", state), ("kernels as saved", as_saved), ("fresh head", fresh_head)):
        model = Codec(causal_config).eval()
        model.load_state_dict(weights, strict=variant != "fresh head")
        with torch.no_grad():
            decoded[variant] = model.decode(model.encode(torch.from_numpy(audio)[None, None], 12))[0, 0].numpy()
    out = decoded["adapted"][:audio.size]
    spectrum = np.fft.rfft(audio, 2 * audio.size) * np.conj(np.fft.rfft(out, 2 * audio.size))
    correlation = np.fft.irfft(spectrum) / np.sqrt((audio ** 2).sum() * (out ** 2).sum())
    assert int(np.argmax(np.abs(correlation))) == 0 and correlation[0] > 0.3
    distances = {k: mel_distance(audio, v[:audio.size], sr) for k, v in decoded.items()}
    assert distances["adapted"] < 0.85 * distances["kernels as saved"] < 0.85 * distances["fresh head"]


# ------------------------------------------------------------------------------------------ loss


def test_compressed_stft_loss_sees_phase_and_level():
    loss = CompressedSTFTLoss()
    torch.manual_seed(6)
    x = 0.1 * torch.randn(2, 1, 8000)
    assert float(loss(x, x)) == 0.0
    flipped = float(loss(-x, x))  # same magnitudes, opposite phase: a magnitude loss would say 0
    assert flipped > 1.0
    assert 0.0 < float(loss(0.5 * x, x)) < flipped
    y = x.clone().requires_grad_(True)
    loss(y * 0.9, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_float16_checkpoint_is_half_the_size_and_reloads_as_the_model_its_id_names(tmp_path):
    codec = Codec(small_convnext(frame_dim=64))
    codec.train()
    with torch.no_grad():
        codec(0.1 * torch.randn(8, 1, 50 * HOP))
    codec.eval()
    full = codec.save(tmp_path / "full.pt", inference_only=True)
    half = codec.save(tmp_path / "half.pt", inference_only=True, float16=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = Codec.load(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert loaded.model_id == Codec.read_checkpoint(half)["meta"]["model_id"] != codec.model_id
    assert Codec.load(half).model_id == loaded.model_id  # the same model every time it is loaded
    x = 0.1 * torch.randn(1, 1, 8000)
    torch.testing.assert_close(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)), atol=1e-2, rtol=0)
