"""Format compatibility: a ``.rvq`` file committed with each format version must be read and decoded by every
future rvqcodec.

The golden streams (``tests/fixtures/golden/``, made by ``make_golden.py`` there: version 1, and version 2 with an
input gain in its header) were written with a small
random-weight codec committed next to it, not with the shipped model, so it stays decodable when the shipped
model changes. What is exact and what is not:

* exact: the file's bytes (its SHA-256), every header field, the codes (their SHA-256), the model id of the
  committed codec, and the bytes the writer produces for the same header and codes;
* within ``DECODED_TOLERANCE``: the decoded audio, because float32 summation order in the decoder's
  convolutions depends on the CPU's vector width, the thread count and the torch version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from rvqcodec import api, bitstream
from rvqcodec.cli import main
from rvqcodec.model.codec import Codec

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
STREAM = GOLDEN / "speech_2kbps.rvq"
CODEC = GOLDEN / "codec.pt"
VERSIONS = {1: "", 2: "_v2"}
"""Format version -> the suffix of its golden files."""
DECODED_TOLERANCE = 1e-4
"""Max absolute difference allowed between decoding the golden stream and the committed ``decoded.npy``
(full scale 1.0; measured: 0 on the machine that wrote it, about 1e-7 with 1 vs 2 threads)."""


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((GOLDEN / "expected.json").read_text())


def _golden(version: int) -> tuple[Path, dict, np.ndarray]:
    """The stream, expected facts and decoded audio committed for ``version``."""
    suffix = VERSIONS[version]
    return (GOLDEN / f"speech_2kbps{suffix}.rvq", json.loads((GOLDEN / f"expected{suffix}.json").read_text()),
            np.load(GOLDEN / f"decoded{suffix}.npy"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_stream_parses_exactly(version):
    stream, expected, _ = _golden(version)
    data = stream.read_bytes()
    assert _sha256(data) == expected["file_sha256"]  # the fixture itself is intact
    header, codes = bitstream.read_rvq(stream)
    assert dataclasses.asdict(header) == {"gain_db": 0.0, "format_version": 1, **expected["header"]}
    assert header.format_version == version and (header.gain_db != 0) == (version >= 2)
    assert list(codes.shape) == expected["codes_shape"] and codes.dtype == np.int64
    assert _sha256(np.ascontiguousarray(codes, dtype="<i8").tobytes()) == expected["codes_sha256"]
    assert [int(np.unique(c).size) for c in codes] == expected["distinct_codes_per_stage"]
    # writing the same header and codes gives the same bytes, and the documented size
    assert bitstream.encode_bitstream(header, codes) == data
    overhead = {1: 39, 2: bitstream.OVERHEAD_BYTES}[version]  # version 1 had no gain byte
    assert len(data) == overhead + -(-header.n_q * header.bits_per_code * header.num_frames // 8)


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_stream_decodes_to_the_committed_audio(version, capsys, tmp_path):
    stream, expected, reference = _golden(version)
    codec = Codec.load(CODEC)
    assert codec.model_id == expected["header"]["model_id"]
    quiet = 10 ** (-30 / 20) if version >= 2 else 1.0  # version 2's source is 30 dB quieter, decoded at its level
    assert reference.shape == (expected["header"]["num_samples"],) and np.abs(reference).max() > 0.01 * quiet
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            decoded, sample_rate = api.decompress(codec, stream.read_bytes())
            assert sample_rate == 16000 and tuple(decoded.shape) == (1, reference.size)
            assert np.abs(decoded[0].numpy() - reference).max() <= DECODED_TOLERANCE, n
    finally:
        torch.set_num_threads(threads)
    # the command line, as a user would run it
    out = tmp_path / "golden.wav"
    assert main(["decompress", str(stream), str(out), "--model", str(CODEC), "--subtype", "FLOAT"]) == 0, \
        capsys.readouterr().err
    written, sample_rate = soundfile.read(out, dtype="float32")
    assert sample_rate == 16000 and np.abs(written - reference).max() <= DECODED_TOLERANCE


def test_golden_stream_refuses_another_model(expected, capsys, tmp_path):
    """The golden stream names its model: the shipped model must refuse it with the one-line mismatch error."""
    code = main(["decompress", str(STREAM), str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"encoded with model {expected['header']['model_id']}" in err
    assert not (tmp_path / "x.wav").exists()
