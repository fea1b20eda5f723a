"""Format compatibility: a ``.rvq`` file committed with this version must be read and decoded by every future one.

The golden stream (``tests/fixtures/golden/``, made by ``make_golden.py`` there) was written with a small
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
DECODED_TOLERANCE = 1e-4
"""Max absolute difference allowed between decoding the golden stream and the committed ``decoded.npy``
(full scale 1.0; measured: 0 on the machine that wrote it, about 1e-7 with 1 vs 2 threads)."""


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((GOLDEN / "expected.json").read_text())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_golden_stream_parses_exactly(expected):
    data = STREAM.read_bytes()
    assert _sha256(data) == expected["file_sha256"]  # the fixture itself is intact
    header, codes = bitstream.read_rvq(STREAM)
    assert dataclasses.asdict(header) == expected["header"]
    assert list(codes.shape) == expected["codes_shape"] and codes.dtype == np.int64
    assert _sha256(np.ascontiguousarray(codes, dtype="<i8").tobytes()) == expected["codes_sha256"]
    assert [int(np.unique(c).size) for c in codes] == expected["distinct_codes_per_stage"]
    # writing the same header and codes gives the same bytes, and the documented size
    assert bitstream.encode_bitstream(header, codes) == data
    assert len(data) == bitstream.OVERHEAD_BYTES + -(-header.n_q * header.bits_per_code * header.num_frames // 8)


def test_golden_stream_decodes_to_the_committed_audio(expected, capsys, tmp_path):
    codec = Codec.load(CODEC)
    assert codec.model_id == expected["header"]["model_id"]
    reference = np.load(GOLDEN / "decoded.npy")
    assert reference.shape == (expected["header"]["num_samples"],) and np.abs(reference).max() > 0.01
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            decoded, sample_rate = api.decompress(codec, STREAM.read_bytes())
            assert sample_rate == 16000 and tuple(decoded.shape) == (1, reference.size)
            assert np.abs(decoded[0].numpy() - reference).max() <= DECODED_TOLERANCE, n
    finally:
        torch.set_num_threads(threads)
    # the command line, as a user would run it
    out = tmp_path / "golden.wav"
    assert main(["decompress", str(STREAM), str(out), "--model", str(CODEC), "--subtype", "FLOAT"]) == 0, \
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
