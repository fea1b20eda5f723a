"""``rvqcodec stream encode|decode|loopback``: live coding with a causal model, from a pipe to a pipe.

::

    rvqcodec stream encode --bitrate 6 < in.wav > codes.bin        # WAV (or --raw 16-bit PCM) in, packets out
    rvqcodec stream decode < codes.bin > out.wav                   # packets in, WAV (or --raw PCM) out
    arecord -f S16_LE -r 16000 | rvqcodec stream encode --raw | rvqcodec stream decode --raw | aplay -f S16_LE -r 16000
    rvqcodec stream loopback in.wav --bitrate 6 --json             # latency, real-time factor, compute per frame

``encode`` writes each packet to stdout (and flushes) as soon as its frame is complete; ``decode`` writes each piece
of audio as soon as it is final, after a WAV header of unknown length (as ffmpeg and sox write to pipes). The packet
format and the 40 ms latency are explained in ``docs/streaming.md``. The model is the shipped streaming model
(``--model streaming``, the default) or any causal checkpoint; a model with look-ahead is refused in one line. A
damaged or lost packet is concealed, never fatal; only a missing or damaged stream header (or a stream of another
model) ends ``decode`` with an error.
"""
from __future__ import annotations

import argparse
import json
import sys

from rvqcodec.commands.common import (
    add_postfilter_argument,
    add_threads_argument,
    apply_postfilter,
    apply_threads,
    resolve_stages,
)
from rvqcodec.errors import InputError, UserError

NESTED_COMMANDS = True
"""``rvqcodec.cli`` parses this command with ``parse_args`` (its sub-commands cannot be parsed intermixed)."""

READ_BYTES = 4096
"""The most bytes one read from stdin asks for; a read returns what the pipe holds (``read1``), so a live source is
coded as it arrives."""


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH|streaming", default="streaming",
                        help="a causal codec checkpoint (.pt), or 'streaming' (the default): the shipped causal "
                             "model rvqcodec/pretrained/streaming.pt. Encoder and decoder must use the same model")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: cpu)")
    add_threads_argument(parser, default=1, why="a frame's operations are too small to share; measured with "
                                                "loopback, 2 threads cost 1.4x one thread's time per frame, 2x at p99")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    encode = modes.add_parser(
        "encode", help="audio on stdin -> packets on stdout",
        description="Encode audio from stdin into a packet stream on stdout, a packet per 20 ms frame as soon as the "
                    "frame is complete (docs/streaming.md). Input: a WAV stream (any rate and channel count: resampled "
                    "and averaged to the model's 16 kHz mono; a header of unknown length is fine), or with --raw "
                    "16-bit little-endian mono PCM at the model's rate.")
    rate = encode.add_mutually_exclusive_group()
    rate.add_argument("-b", "--bitrate", type=float, default=None,
                      help="bitrate of the codes in kbps, a multiple of 0.5 up to 8 (default: the model's highest); "
                           "each packet adds 8 bytes (3.2 kbps at one frame per packet)")
    rate.add_argument("--n-q", type=int, default=None, help="number of RVQ stages instead of --bitrate")
    encode.add_argument("--raw", action="store_true",
                        help="stdin is raw 16-bit little-endian mono PCM at the model's rate (as arecord -f S16_LE "
                             "-r 16000 writes), not WAV")
    encode.add_argument("--frames-per-packet", type=int, default=1, metavar="N",
                        help="frames sent together in one packet (default 1; N saves 8 bytes per N-1 frames and adds "
                             "(N-1) x 20 ms of latency)")
    _add_model(encode)

    decode = modes.add_parser(
        "decode", help="packets on stdin -> audio on stdout",
        description="Decode a packet stream from stdin (from 'rvqcodec stream encode') to audio on stdout, each piece "
                    "as soon as it is final: a 16-bit mono WAV stream with a header of unknown length, or with --raw "
                    "16-bit little-endian PCM at the model's rate. Lost or damaged packets are concealed (the last "
                    "frame repeated, fading to silence over 80 ms) and counted on stderr.")
    decode.add_argument("--raw", action="store_true",
                        help="write raw 16-bit little-endian mono PCM (as aplay -f S16_LE -r 16000 reads), not WAV")
    add_postfilter_argument(decode)
    _add_model(decode)

    loop = modes.add_parser(
        "loopback", help="stream a file through encoder and decoder: latency, real-time factor, compute per frame",
        description="Stream an audio file through the streaming encoder and decoder in one process, in 20 ms pieces "
                    "as a microphone would deliver them, and report the algorithmic latency (by construction and "
                    "measured with an impulse), the real-time factor and the compute per 20 ms frame (encode + "
                    "decode; mean and 99th percentile).")
    loop.add_argument("input", metavar="IN", help="audio file (any format, rate and channel count soundfile reads)")
    rate = loop.add_mutually_exclusive_group()
    rate.add_argument("-b", "--bitrate", type=float, default=None,
                      help="bitrate in kbps (default: the model's highest)")
    rate.add_argument("--n-q", type=int, default=None, help="number of RVQ stages instead of --bitrate")
    loop.add_argument("--out", metavar="OUT", default=None, help="also write the decoded audio to this file")
    loop.add_argument("-f", "--force", action="store_true", help="overwrite --out if it exists")
    loop.add_argument("--json", action="store_true", help="print the report as JSON")
    add_postfilter_argument(loop)
    _add_model(loop)


def load_streaming_model(args: argparse.Namespace):
    """The causal codec ``--model`` names (the shipped ``streaming`` model by default) after ``--threads``;
    UserError in one line if it is missing, unreadable or not causal."""
    from rvqcodec.pretrained import STREAMING_MODEL, load_codec, load_streaming_codec
    from rvqcodec.realtime import check_streamable

    apply_threads(args)
    try:
        codec = load_streaming_codec(args.device) if args.model == STREAMING_MODEL else load_codec(
            args.model, device=args.device)
        check_streamable(codec)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    apply_postfilter(codec, args)
    return codec


def run(args: argparse.Namespace) -> int:
    return {"encode": _encode, "decode": _decode, "loopback": _loopback}[args.mode](args)


def _stdin() -> "object":
    stream = sys.stdin.buffer
    if sys.stdin.isatty():
        raise UserError("stdin is a terminal: pipe the input in (e.g. rvqcodec stream encode < in.wav > codes.bin)")
    return stream


def _stdout() -> "object":
    if sys.stdout.isatty():
        raise UserError("stdout is a terminal: redirect the binary output (e.g. > codes.bin or | ...)")
    return sys.stdout.buffer


def _encode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from rvqcodec.data.wav_pipe import raw_format, read_wav_header
    from rvqcodec.live import PacketEncoder

    source, sink = _stdin(), _stdout()
    codec = load_streaming_model(args)
    n_q = resolve_stages(codec, args.bitrate, args.n_q)
    try:
        sender = PacketEncoder(codec, n_q, args.frames_per_packet)
        fmt = raw_format(codec.sample_rate) if args.raw else read_wav_header(source)
    except (ValueError, InputError) as exc:
        raise UserError(str(exc)) from None
    resampler = None
    if fmt.sample_rate != codec.sample_rate:
        from rvqcodec.data.audio_io import StreamingResampler

        try:
            resampler = StreamingResampler(fmt.sample_rate, codec.sample_rate)
        except ValueError as exc:
            raise UserError(f"input at {fmt.sample_rate} Hz: {exc}") from None
        print(f"note: input resampled from {fmt.sample_rate} to {codec.sample_rate} Hz", file=sys.stderr)
    if fmt.channels > 1:
        print(f"note: {fmt.channels} channels averaged to mono", file=sys.stderr)
    print(f"rvqcodec stream encode: {codec.bitrate(n_q):g} kbps ({n_q} stages), model {codec.model_id}",
          file=sys.stderr)

    def send(samples: np.ndarray | None) -> None:
        if samples is not None:
            mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
            if resampler is not None:
                mono = resampler.push(torch.from_numpy(np.ascontiguousarray(mono))[None])[0].numpy()
            data = sender.push(mono)
        else:
            data = b""
            if resampler is not None:
                data = sender.push(resampler.flush()[0].numpy())
            data += sender.flush()
        if data:
            sink.write(data)
            sink.flush()

    send(np.zeros((0, 1), dtype=np.float32))  # the stream header at once
    remaining = fmt.data_bytes
    pending = b""
    while remaining is None or remaining > 0:
        chunk = source.read1(READ_BYTES if remaining is None else min(READ_BYTES, remaining))
        if not chunk:
            break
        if remaining is not None:
            remaining -= len(chunk)
        pending += chunk
        whole = len(pending) // fmt.block_align * fmt.block_align
        if whole:
            send(fmt.decode(pending[:whole]))
            pending = pending[whole:]
    if pending:
        print(f"warning: the input ended inside a sample ({len(pending)} bytes dropped)", file=sys.stderr)
    send(None)
    return 0


def _decode(args: argparse.Namespace) -> int:
    from rvqcodec.data.wav_pipe import to_pcm16, wav_stream_header
    from rvqcodec.live import PacketDecoder

    source, sink = _stdin(), _stdout()
    codec = load_streaming_model(args)
    receiver = PacketDecoder(codec)
    started = False
    try:
        while True:
            chunk = source.read1(READ_BYTES)
            audio = receiver.push(chunk) if chunk else receiver.flush()
            if not started and receiver.header is not None:
                started = True
                if not args.raw:
                    sink.write(wav_stream_header(codec.sample_rate))
            if audio.size:
                sink.write(to_pcm16(audio))
            sink.flush()
            if not chunk:
                break
    except InputError as exc:  # the stream header: missing, damaged, another model's
        raise UserError(str(exc)) from None
    report, stats = receiver.report, receiver.reader.stats
    if report.frames_concealed or stats.skipped_bytes or stats.late_packets:
        print(f"note: {report.frames_concealed} of {report.frames_decoded + report.frames_concealed} frames "
              f"concealed ({stats.lost_packets} packets lost, {stats.skipped_bytes} damaged bytes skipped, "
              f"{stats.late_packets} repeated or late packets dropped)", file=sys.stderr)
    if not report.complete:
        print("warning: the stream ended without its end packet (cut short?)", file=sys.stderr)
    return 0


def _loopback(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from rvqcodec.data.audio_io import AudioReadError, read_audio, write_audio
    from rvqcodec.fileio import already_exists_message, same_file
    from rvqcodec.realtime import loopback, measure_latency

    if args.out is not None:
        from pathlib import Path

        out = Path(args.out)
        if out.exists() and same_file(out, args.input):
            raise UserError(f"--out {out} is the input file: it is never overwritten")
        if out.exists() and not args.force:
            raise UserError(already_exists_message(out))
    codec = load_streaming_model(args)
    n_q = resolve_stages(codec, args.bitrate, args.n_q)
    try:
        wav = read_audio(args.input, target_sr=codec.sample_rate).samples[0].numpy()
    except (AudioReadError, FileNotFoundError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    latency = measure_latency(codec, n_q)
    result = loopback(codec, wav, n_q)
    frame_ms = np.asarray(result.piece_seconds) * 1000.0
    duration = wav.size / codec.sample_rate
    total = float(np.sum(result.piece_seconds) + result.flush_seconds)
    report = {
        "input": str(args.input),
        "model_id": codec.model_id,
        "bitrate_kbps": codec.bitrate(n_q),
        "n_q": n_q,
        "duration_s": duration,
        "frames": int(result.codes.shape[1]),
        "frame_ms": 1000.0 * codec.hop_length / codec.sample_rate,
        "algorithmic_latency_ms": 1000.0 * latency.by_construction_samples / codec.sample_rate,
        "measured_latency_ms": latency.ms,
        "latency_check": {"causal": latency.causal, "impulse_reaches_output": latency.responds},
        "real_time_factor": total / duration if duration else None,
        "compute_per_frame_ms": {"mean": float(frame_ms.mean()) if frame_ms.size else None,
                                 "p99": float(np.percentile(frame_ms, 99)) if frame_ms.size else None,
                                 "max": float(frame_ms.max()) if frame_ms.size else None},
        "threads": torch.get_num_threads(),
    }
    if args.out is not None:
        try:
            write_audio(args.out, result.audio[:wav.size], codec.sample_rate, overwrite=args.force,
                        protected=[args.input])
        except (OSError, InputError) as exc:
            raise UserError(str(exc).splitlines()[0]) from None
        report["out"] = str(args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        compute = report["compute_per_frame_ms"]
        rtf = report["real_time_factor"]
        print(f"{args.input}: {duration:.2f} s at {report['bitrate_kbps']:g} kbps ({n_q} stages), model "
              f"{codec.model_id}\n"
              f"algorithmic latency  {report['algorithmic_latency_ms']:g} ms by construction, "
              f"{report['measured_latency_ms']:g} ms measured with an impulse\n"
              f"compute per {report['frame_ms']:g} ms frame  mean {compute['mean']:.2f} ms, p99 "
              f"{compute['p99']:.2f} ms (encode + decode, {report['threads']} thread(s))\n"
              f"real-time factor     {rtf:.3f} (compute time / audio time)" if frame_ms.size else
              f"{args.input}: too short for one frame")
    return 0
