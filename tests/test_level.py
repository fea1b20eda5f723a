"""Input level normalization (``rvqcodec.level``): the gain rule, the same level as training reads its files at,
and the shipped model coding a quiet recording of real speech as well as the recording at its own level, decoded at
the quiet level."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rvqcodec import api, level
from rvqcodec.bitstream import decode_bitstream
from rvqcodec.data.audio_io import read_audio
from rvqcodec.data.datasets import AudioFileListDataset
from rvqcodec.metrics import pesq_wb

SR = 16000
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "1272-128104-0000_3s.wav"


def _rms_dbfs(x: torch.Tensor) -> float:
    return 10 * math.log10(float(x.double().pow(2).mean()))


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    return read_audio(SAMPLE, target_sr=SR).samples[0]


def test_the_meter_gives_the_whole_signals_rms_and_peak_whatever_the_blocks(speech):
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.integers(0, speech.numel(), size=40))
    blocks = [speech[a:b] for a, b in zip([0, *cuts], [*cuts, speech.numel()])]  # sizes 0 to thousands
    meter = level.LevelMeter()
    for block in blocks:
        meter.add(block.numpy() if len(block) % 2 else block.view(1, -1))
    assert meter.rms_dbfs == pytest.approx(_rms_dbfs(speech), abs=1e-6)
    assert meter.peak_dbfs == pytest.approx(20 * math.log10(float(speech.abs().max())), abs=1e-6)
    assert level.gain_db_of(blocks) == meter.gain_db == level.normalizing_gain_db(meter.rms_dbfs, meter.peak_dbfs)


def test_the_gain_moves_the_rms_to_the_target_in_half_decibels_within_its_limits():
    target = level.TARGET_RMS_DBFS
    assert level.normalizing_gain_db(target) == 0.0
    assert level.normalizing_gain_db(target - 22.6) == 22.5  # rounded to the header's step
    assert level.normalizing_gain_db(target - 22.6, peak_dbfs=-21.4) == 20.0  # the peak may rise to -1 dBFS only
    assert level.normalizing_gain_db(target + 12.0) == -12.0
    assert level.normalizing_gain_db(-120.0 + 50) == level.MAX_BOOST_DB
    assert level.normalizing_gain_db(10.0) == -level.MAX_CUT_DB
    for silence in (-math.inf, level.SILENCE_DBFS, float("nan")):
        assert level.normalizing_gain_db(silence) == 0.0
    assert level.gain_db_of([]) == 0.0 and level.gain_db_of([torch.zeros(SR)]) == 0.0
    assert math.copysign(1.0, level.normalizing_gain_db(target + 0.1)) == 1.0  # never -0.0


@pytest.mark.parametrize("scale", [1.0, 0.03, 3.0])
def test_a_normalized_file_sits_where_training_reads_its_files(speech, scale, tmp_path):
    """The training dataset scales each file to its RMS target, peak-limited; the encoder's gain lands the same
    signal within the header's half-decibel step of the same level."""
    import soundfile

    x = speech * scale
    soundfile.write(tmp_path / "a.wav", (x / max(1.0, float(x.abs().max()))).numpy(), SR, subtype="FLOAT")
    stored = read_audio(tmp_path / "a.wav").samples[0]
    training = AudioFileListDataset([tmp_path / "a.wav"], segment_seconds=None, sample_rate=SR)[0].view(-1)
    encoded = stored * level.amplitude(level.gain_db_of([stored]))
    assert _rms_dbfs(encoded) == pytest.approx(_rms_dbfs(training), abs=0.5)
    assert float(encoded.abs().max()) <= 10 ** (level.PEAK_LIMIT_DBFS / 20) + 1e-6


def test_a_quiet_recording_is_coded_like_the_original_and_decoded_at_its_own_level(speech):
    """The 3 s sample and the same at -36 dB (about -62 dBFS RMS, a far microphone): with normalization both are
    encoded from the same signal, so the quiet one's decode is the original's scaled down, and it scores the
    original's PESQ-WB against the quiet reference; encoded as it is, the quiet copy scores much lower (measured
    2.06 vs 1.68 at 3 kbps)."""
    codec = api.from_pretrained()
    quiet = speech * 10 ** (-36 / 20)
    data = api.compress(codec, speech, SR, bitrate=3)
    quiet_data = api.compress(codec, quiet, SR, bitrate=3)
    header, codes = decode_bitstream(data)
    quiet_header, quiet_codes = decode_bitstream(quiet_data)
    assert quiet_header.gain_db == header.gain_db + 36.0
    assert (quiet_codes == codes).mean() > 0.98  # the same input up to float rounding
    y = api.decompress(codec, data)[0][0]
    y_quiet = api.decompress(codec, quiet_data)[0][0]
    assert _rms_dbfs(y_quiet) == pytest.approx(_rms_dbfs(y) - 36.0, abs=0.1)
    assert _rms_dbfs(y) == pytest.approx(_rms_dbfs(speech), abs=1.5)
    normalized = pesq_wb(quiet.numpy(), y_quiet.numpy(), SR)
    assert normalized == pytest.approx(pesq_wb(speech.numpy(), y.numpy(), SR), abs=0.05)
    as_recorded = api.compress(codec, quiet, SR, bitrate=3, normalize=False)
    assert decode_bitstream(as_recorded)[0].gain_db == 0.0
    assert normalized > pesq_wb(quiet.numpy(), api.decompress(codec, as_recorded)[0][0].numpy(), SR) + 0.3
