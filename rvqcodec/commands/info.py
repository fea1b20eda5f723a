"""``rvqcodec info [PATH]``: describe a codec checkpoint (configuration, size, bitrates) or a ``.rvq`` file.

Without PATH (and without ``--model``) the shipped default model is described; its configuration lists the fields of
its own architecture (SEANet or frame-rate ConvNeXt) and of its quantizer, not the other family's, which every
checkpoint also stores at their defaults (:func:`model_config`). For a ``.rvq`` file the header
is printed (duration, bitrate, stages, model id) and, if ``--model`` is given or the default model is
installed, whether that model can decode it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rvqcodec.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=None, metavar="PATH",
                        help="checkpoint (.pt) or .rvq file (default: the --model checkpoint or the shipped model)")
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="checkpoint to describe, or to check a .rvq file against")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def _is_rvq(path: Path) -> bool:
    from rvqcodec.streams import looks_like_stream

    return looks_like_stream(path) or path.suffix.lower() == ".rvq"


COMMON_FIELDS = ("sample_rate", "architecture", "latent_dim")
"""The :class:`rvqcodec.model.codec.CodecConfig` fields every architecture uses."""
ARCHITECTURE_FIELDS = {
    "seanet": ("channels", "strides", "n_residual_units", "kernel_size", "residual_kernel_size", "compress"),
    "convnext": ("frame_hop", "frame_dim", "encoder_blocks", "decoder_blocks", "mlp_ratio", "frame_kernel",
                 "stem_n_fft", "head_n_fft", "causal", "rate_conditioning"),
}
"""The fields only one encoder/decoder family reads (``CodecConfig``'s docstring); a checkpoint stores them all."""


def quantizer_config_fields() -> tuple[str, ...]:
    """The quantizer's fields: ``n_q``, ``codebook_size`` and :data:`rvqcodec.model.codec.QUANTIZER_FIELDS`."""
    from rvqcodec.model.codec import QUANTIZER_FIELDS

    return ("n_q", "codebook_size", *QUANTIZER_FIELDS)


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``CodecConfig.to_dict()`` that its model uses: the common ones, its architecture's and the
    quantizer's (the other family's fields sit in every checkpoint at their defaults and mean nothing for it), in
    the config's order. A field in no group (a newer config) is kept."""
    other = {name for arch, names in ARCHITECTURE_FIELDS.items() if arch != config.get("architecture")
             for name in names}
    return {k: v for k, v in config.items() if k not in other}


def checkpoint_info(path: Path) -> dict[str, Any]:
    """Everything worth knowing about a checkpoint, as a JSON-safe dict."""
    from rvqcodec.model.codec import Codec

    payload = Codec.read_checkpoint(path)
    codec = Codec.load(path)
    counts = codec.parameter_counts()
    meta = {k: v for k, v in payload.get("meta", {}).items() if isinstance(v, (str, int, float, bool))}
    return {
        "kind": "checkpoint",
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "model_id": codec.model_id,
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "frame_rate": codec.frame_rate,
        "max_n_q": codec.max_n_q,
        "codebook_size": codec.config.codebook_size,
        "bits_per_code": codec.bits_per_code,
        "bitrates_kbps": codec.bitrates(),
        "postfilter": codec.postfilter,
        "parameters": counts,
        "config": model_config(codec.config.to_dict()),
        "meta": meta,
        "saved_with_torch": meta.get("torch_version"),
    }


def stream_info(path: Path, model_path: str | None) -> dict[str, Any]:
    """The header of a ``.rvq`` file (fully checked: checksums, length), plus compatibility with a model."""
    from rvqcodec.pretrained import load_codec
    from rvqcodec.streams import check_fits, file_header

    header = file_header(path)
    info: dict[str, Any] = {
        "kind": "bitstream",
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "sample_rate": header.sample_rate,
        "hop_length": header.hop_length,
        "n_q": header.n_q,
        "bits_per_code": header.bits_per_code,
        "bitrate_kbps": header.bitrate_kbps,
        "num_samples": header.num_samples,
        "duration_s": header.duration_s,
        "model_id": header.model_id,
        "gain_db": header.gain_db,
        "format_version": header.format_version,
    }
    try:
        codec = load_codec(model_path)
    except FileNotFoundError:
        if model_path is not None:
            raise
        return info  # no default model installed: nothing to check against
    info["checked_model_id"] = codec.model_id
    try:
        check_fits(header, codec)
        info["decodable"] = True
    except ValueError:
        info["decodable"] = False
    return info


def _format(info: dict[str, Any]) -> str:
    if info["kind"] == "bitstream":
        lines = [
            f"bitstream   {info['path']} ({info['file_bytes']} bytes)",
            f"audio       {info['duration_s']:.3f} s = {info['num_samples']} samples at {info['sample_rate']} Hz",
            f"bitrate     {info['bitrate_kbps']:g} kbps ({info['n_q']} stages x {info['bits_per_code']} bits x "
            f"{info['sample_rate'] / info['hop_length']:g} frames/s)",
            f"model       {info['model_id']}",
            f"level gain  {info['gain_db']:+g} dB (applied before encoding, divided out when decoding)",
            f"format      version {info['format_version']}",
        ]
        if "decodable" in info:
            verdict = "yes" if info["decodable"] else "no (written by another model)"
            lines.append(f"decodable   {verdict} with model {info['checked_model_id']}")
        return "\n".join(lines)
    params = info["parameters"]
    rates = ", ".join(f"{b:g}" for b in info["bitrates_kbps"])
    lines = [
        f"checkpoint  {info['path']} ({info['file_bytes'] / 1e6:.1f} MB)",
        f"model id    {info['model_id']}",
        f"audio       {info['sample_rate']} Hz mono, hop {info['hop_length']} -> {info['frame_rate']:g} frames/s",
        f"quantizer   {info['max_n_q']} stages x {info['codebook_size']} codes ({info['bits_per_code']} bits)",
        f"bitrates    {rates} kbps",
        f"postfilter  {info['postfilter']:g} (formant postfilter strength the decoder uses; --postfilter overrides)",
        f"parameters  {params['total']:,} (encoder {params['encoder']:,}, decoder {params['decoder']:,}, "
        f"quantizer {params['quantizer']:,}; {params['codebook_entries']:,} codebook values)",
        "config      " + ", ".join(f"{k}={v}" for k, v in info["config"].items()),
    ]
    if info.get("saved_with_torch"):
        import torch

        lines.append(f"saved with  torch {info['saved_with_torch']} (running torch {torch.__version__})")
    # the id and torch version have their own lines; free-text fields (e.g. how it was trained) follow as written
    meta = {k: v for k, v in info["meta"].items() if k not in ("model_id", "torch_version", "postfilter")}
    if meta:
        lines.append("meta        " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rvqcodec.bitstream import BitstreamError
    from rvqcodec.pretrained import resolve_checkpoint

    try:
        if args.path is not None:
            path = Path(args.path)
            if not path.is_file():
                raise UserError(f"not found: {path}" if not path.exists() else f"not a file: {path}")
            info = stream_info(path, args.model) if _is_rvq(path) else checkpoint_info(path)
        else:
            info = checkpoint_info(resolve_checkpoint(args.model))
    except BitstreamError as exc:
        raise UserError(f"{args.path}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    print(json.dumps(info, indent=2) if args.json else _format(info))
    return 0
