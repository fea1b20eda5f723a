"""The .rvq container: exact round trips, the size formula, and a specific error for every kind of damage."""
from __future__ import annotations

import collections
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import with_version_byte

from rvqcodec import bitstream as bs
from rvqcodec.bitstream import (
    CorruptedBitstreamError,
    ModelMismatchError,
    NotRVQFileError,
    RVQHeader,
    TruncatedBitstreamError,
    UnsupportedVersionError,
)

MODEL_ID = "0123456789abcdef"


def _random_stream(n_q: int, num_samples: int, bits: int = 10, hop: int = 320, seed: int = 0):
    header = RVQHeader(sample_rate=16000, hop_length=hop, n_q=n_q, bits_per_code=bits,
                       num_samples=num_samples, model_id=MODEL_ID)
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=(n_q, header.num_frames))
    return header, codes


@pytest.mark.parametrize("n_q", range(1, 17))
def test_round_trip_every_bitrate_keeps_codes_and_header(n_q):
    header, codes = _random_stream(n_q, num_samples=16000 * 3 + 17, seed=n_q)
    data = bs.encode_bitstream(header, codes)
    header2, codes2 = bs.decode_bitstream(data)
    assert header2 == header
    assert codes2.dtype == np.int64
    np.testing.assert_array_equal(codes2, codes)
    assert header.bitrate_kbps == pytest.approx(0.5 * n_q)


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 9, 10, 11, 13, 16, 24, 32])
def test_packing_round_trip_any_width_including_extremes(bits):
    rng = np.random.default_rng(bits)
    for n_q, frames in [(1, 1), (3, 5), (5, 13), (2, 0)]:
        codes = rng.integers(0, 2**bits, size=(n_q, frames), dtype=np.int64)
        codes.flat[:1] = 2**bits - 1 if codes.size else codes.flat[:1]  # the all-ones code survives
        packed = bs.pack_codes(codes, bits)
        assert len(packed) == bs.payload_size(n_q, frames, bits)
        np.testing.assert_array_equal(bs.unpack_codes(packed, n_q, frames, bits), codes)


def test_packing_layout_is_frame_major_msb_first():
    # frame 0: stage0=1, stage1=2; frame 1: stage0=3, stage1=0 -> 3-bit fields 001 010 011 000 (+ 4 pad bits)
    codes = np.array([[1, 3], [2, 0]])
    assert bs.pack_codes(codes, 3) == bytes([0b00101001, 0b10000000])


def test_packing_spans_several_internal_chunks(monkeypatch):
    monkeypatch.setattr(bs, "_PACK_CHUNK_CODES", 64)
    codes = np.random.default_rng(1).integers(0, 1024, size=(3, 101))
    packed = bs.pack_codes(codes, 10)
    assert len(packed) == bs.payload_size(3, 101, 10)
    np.testing.assert_array_equal(bs.unpack_codes(packed, 3, 101, 10), codes)


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1023\]"):
        bs.pack_codes(np.array([[1024]]), 10)
    with pytest.raises(ValueError, match=r"\[0, 1023\]"):
        bs.pack_codes(np.array([[-1]]), 10)


@pytest.mark.parametrize("num_samples", [0, 1, 319, 320, 321, 16000, 16000 * 7 + 5])
@pytest.mark.parametrize("n_q", [1, 3, 16])
def test_file_size_is_nominal_bitrate_times_duration_plus_40_bytes(num_samples, n_q):
    header, codes = _random_stream(n_q, num_samples)
    data = bs.encode_bitstream(header, codes)
    frames = -(-num_samples // 320)
    # documented formula: 40 + ceil(bitrate_bps * (frames * hop / sr) / 8)
    nominal_bits = header.bitrate_kbps * 1000 * frames * 320 / 16000
    assert bs.OVERHEAD_BYTES == 40  # the number the README and docs/bitstream.md state
    assert len(data) == bs.OVERHEAD_BYTES + int(np.ceil(round(nominal_bits, 6) / 8))
    assert len(data) == bs.file_size(n_q, num_samples, 320, 10) == header.file_bytes


def test_empty_audio_is_a_valid_stream():
    header, codes = _random_stream(4, 0)
    assert codes.shape == (4, 0)
    data = bs.encode_bitstream(header, codes)
    assert len(data) == bs.OVERHEAD_BYTES
    header2, codes2 = bs.decode_bitstream(data)
    assert header2.num_samples == 0 and codes2.shape == (4, 0)


def test_packing_one_hour_at_8kbps_is_vectorised(monkeypatch):
    """Writing and reading 1 h at 8 kbps (2.88 M codes) does a fixed amount of Python work per chunk of
    ``_PACK_CHUNK_CODES`` codes, never per code: counted, not timed (a per-code loop would take minutes and turn
    up here as millions of executed lines of bitstream.py)."""
    header, codes = _random_stream(16, 16000 * 3600)
    n_chunks = -(-codes.size // bs._PACK_CHUNK_CODES)
    assert n_chunks == 11

    calls = collections.Counter()
    for name in ("packbits", "unpackbits"):  # the numpy passes that do the bit work
        real = getattr(np, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(np, name, counted)
    lines = 0
    limit = 100 * n_chunks + 1000  # lines of bitstream.py executed: measured 183 in all here

    def tracer(frame, event, arg):
        nonlocal lines
        if frame.f_code.co_filename != bs.__file__:
            return None
        if event == "line":
            lines += 1
            if lines > limit:
                raise AssertionError(f"more than {limit} lines of bitstream.py ran: a per-code Python loop")
        return tracer

    previous = sys.gettrace()  # a coverage tool's or debugger's, put back afterwards
    sys.settrace(tracer)
    try:
        data = bs.encode_bitstream(header, codes)
        _, codes2 = bs.decode_bitstream(data)
    finally:
        sys.settrace(previous)
    assert len(data) == bs.OVERHEAD_BYTES + 3_600_000  # 8 kbps x 3600 s = 3.6 MB
    np.testing.assert_array_equal(codes2, codes)
    # one unpackbits + packbits per chunk each way
    assert calls == {"packbits": 2 * n_chunks, "unpackbits": 2 * n_chunks}, calls
    assert 0 < lines <= limit


# ------------------------------------------------------------------------------------------- damage


@pytest.fixture()
def good_stream() -> bytes:
    header, codes = _random_stream(6, 16000 * 2 + 100)
    return bs.encode_bitstream(header, codes)


@pytest.mark.parametrize("keep", [0, 1, 3, 4, 5, 20, 34, 35, 36, 37, -1, -4, -5])
def test_truncated_file_gives_truncation_error(good_stream, keep):
    cut = good_stream[:keep] if keep >= 0 else good_stream[:len(good_stream) + keep]
    with pytest.raises(TruncatedBitstreamError, match="truncated|empty"):
        bs.decode_bitstream(cut)


@pytest.mark.parametrize("keep", [5, 20, 35])
def test_a_file_shorter_than_the_header_states_the_documented_size(good_stream, keep):
    """The README and docs/bitstream.md call the 40 bytes every .rvq file has its header (issue 28: an error said
    '35-byte header'); the error message states the same number, from the module's constant."""
    with pytest.raises(TruncatedBitstreamError) as info:
        bs.decode_bitstream(good_stream[:keep])
    assert str(info.value) == (f"truncated .rvq file: {keep} of at least {bs.OVERHEAD_BYTES} bytes "
                               "(every .rvq file has a header and checksums of that size)")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"(\d+)-byte header", readme) == [str(bs.OVERHEAD_BYTES)]


def test_flipped_payload_bit_gives_checksum_error(good_stream):
    rng = np.random.default_rng(0)
    for position in rng.integers(bs.HEADER_SIZE, len(good_stream), size=20):
        for bit in (0, 5):
            damaged = bytearray(good_stream)
            damaged[position] ^= 1 << bit
            with pytest.raises(CorruptedBitstreamError, match="checksum"):
                bs.decode_bitstream(bytes(damaged))


@pytest.mark.parametrize("position", range(5, bs.HEADER_SIZE))
def test_flipped_header_bit_gives_header_checksum_error(good_stream, position):
    damaged = bytearray(good_stream)
    damaged[position] ^= 0x10
    with pytest.raises(CorruptedBitstreamError, match="header checksum"):
        bs.decode_bitstream(bytes(damaged))


def test_trailing_bytes_are_refused(good_stream):
    with pytest.raises(CorruptedBitstreamError, match="trailing"):
        bs.decode_bitstream(good_stream + b"\x00")


@pytest.mark.parametrize("prefix", [b"RIFF", b"fLaC", b"RVQ\x00", b"\x00\x00\x00\x00", b"x"])
def test_wrong_magic_gives_not_rvq_error(good_stream, prefix):
    with pytest.raises(NotRVQFileError, match="not an .rvq file"):
        bs.decode_bitstream(prefix + good_stream[len(prefix):])


def test_text_file_is_not_rvq():
    with pytest.raises(NotRVQFileError):
        bs.decode_bitstream(b"hello, this is not audio\n")


def test_newer_version_gives_version_error(good_stream):
    assert bs.decode_bitstream(with_version_byte(good_stream, 2))[0].n_q == 6  # the helper itself is sound
    with pytest.raises(UnsupportedVersionError, match="version 3 .*newer"):
        bs.decode_bitstream(with_version_byte(good_stream, 3))
    with pytest.raises(UnsupportedVersionError, match="version 0"):
        bs.decode_bitstream(with_version_byte(good_stream, 0))


@pytest.mark.parametrize("gain_db", [0.0, 0.5, -0.5, 22.5, -20.0, 63.5, -64.0])
def test_the_gain_survives_the_round_trip_in_one_byte(gain_db):
    header, codes = _random_stream(3, 16000)
    header = RVQHeader(**{**header.__dict__, "gain_db": gain_db})
    data = bs.encode_bitstream(header, codes)
    assert len(data) == header.file_bytes == bs.OVERHEAD_BYTES + header.payload_bytes
    assert struct.unpack_from("<b", data, 31)[0] == round(2 * gain_db)  # offset 31, half-decibels
    assert bs.decode_bitstream(data)[0].gain_db == gain_db


@pytest.mark.parametrize("gain_db", [0.25, 64.0, -64.5, float("nan"), float("inf"), True, "3"])
def test_a_gain_the_byte_cannot_hold_is_refused(gain_db):
    assert not bs.is_storable_gain(gain_db)
    with pytest.raises(ValueError, match="gain_db"):
        RVQHeader(16000, 320, 4, 10, 100, MODEL_ID, gain_db=gain_db)


def test_a_version_1_stream_is_read_as_gain_0_and_written_back_byte_for_byte():
    """Version 1 (before the gain byte): a 35-byte header, 39 bytes of overhead. Built here from its documented
    layout, independently of the writer."""
    header, codes = _random_stream(5, 16000 + 33)
    fields = struct.pack("<4sBIIBBQ8s", b"RVQC", 1, 16000, 320, 5, 10, 16000 + 33, bytes.fromhex(MODEL_ID))
    head = fields + struct.pack("<I", zlib.crc32(fields))
    payload = bs.pack_codes(codes, 10)
    data = head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
    parsed, parsed_codes = bs.decode_bitstream(data)
    assert (parsed.format_version, parsed.gain_db, parsed.num_samples) == (1, 0.0, 16000 + 33)
    np.testing.assert_array_equal(parsed_codes, codes)
    assert parsed.file_bytes == len(data) == 39 + len(payload)
    assert bs.encode_bitstream(parsed, codes) == data
    with pytest.raises(ValueError, match="version 1 header"):
        RVQHeader(16000, 320, 5, 10, 100, MODEL_ID, gain_db=3.0, format_version=1)
    with pytest.raises(TruncatedBitstreamError):
        bs.decode_bitstream(data[:34])


def test_other_model_gives_model_mismatch_error(good_stream):
    header, _ = bs.decode_bitstream(good_stream)
    bs.check_model(header, MODEL_ID)
    with pytest.raises(ModelMismatchError, match=f"encoded with model {MODEL_ID}.*fedcba9876543210"):
        bs.check_model(header, "fedcba9876543210")


def test_every_error_is_a_value_error_subclass_with_one_line_message(good_stream):
    cases = [good_stream[:10], b"xxxx" + good_stream[4:], with_version_byte(good_stream, 9),
             good_stream[:-1] + bytes([good_stream[-1] ^ 1])]
    kinds = set()
    for data in cases:
        with pytest.raises(bs.BitstreamError) as info:
            bs.decode_bitstream(data)
        assert isinstance(info.value, ValueError)
        assert "\n" not in str(info.value)
        kinds.add(type(info.value))
    assert len(kinds) == 4


def test_header_refuses_impossible_values():
    with pytest.raises(ValueError, match="model_id"):
        RVQHeader(16000, 320, 4, 10, 100, "not-hex-at-all!!")
    with pytest.raises(ValueError, match="n_q"):
        RVQHeader(16000, 320, 0, 10, 100, MODEL_ID)
    with pytest.raises(ValueError, match="shape"):
        bs.encode_bitstream(RVQHeader(16000, 320, 2, 10, 640, MODEL_ID), np.zeros((2, 3), dtype=np.int64))


def test_write_rvq_is_atomic_and_refuses_to_overwrite(tmp_path):
    header, codes = _random_stream(2, 4000)
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        bs.write_rvq(tmp_path / "missing" / "a.rvq", header, codes)
    path = tmp_path / "sub" / "a.rvq"
    path.parent.mkdir()
    size = bs.write_rvq(path, header, codes)
    assert path.stat().st_size == size == header.file_bytes
    with pytest.raises(FileExistsError, match="--force"):
        bs.write_rvq(path, header, codes)
    header3, codes3 = _random_stream(3, 4000)
    bs.write_rvq(path, header3, codes3, overwrite=True)
    assert bs.read_rvq(path)[0].n_q == 3
    assert [p.name for p in path.parent.iterdir()] == ["a.rvq"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # usual permissions, not mkstemp's 0600


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
