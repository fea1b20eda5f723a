"""What ties a codec to the ``.rvq`` container: the header its streams carry, the check that it can decode a
stream, and the number of RVQ stages a bitrate request means.

:mod:`rvqcodec.bitstream` is the container alone (bytes <-> header and codes) and knows no model;
:mod:`rvqcodec.model` is the model alone and knows no container. The bytes API (:mod:`rvqcodec.api`), the file
API (:mod:`rvqcodec.codec_files`) and the commands meet here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rvqcodec import bitstream
from rvqcodec.bitstream import ModelMismatchError, RVQHeader

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec


def resolve_n_q(codec: Codec, bitrate: float | None = None, n_q: int | None = None) -> int:
    """Number of RVQ stages for a bitrate in kbps or an explicit ``n_q``; neither: all stages.

    Raises ValueError (listing the valid bitrates / range) for an unsupported value or a contradiction.
    """
    if n_q is not None:
        if isinstance(n_q, bool) or int(n_q) != n_q or not 1 <= n_q <= codec.max_n_q:
            raise ValueError(f"n_q must be an integer between 1 and {codec.max_n_q}, got {n_q!r}")
        n_q = int(n_q)
    if bitrate is not None:
        from_bitrate = codec.n_q_for_bitrate(bitrate)
        if n_q is not None and n_q != from_bitrate:
            raise ValueError(f"--bitrate {bitrate:g} means n_q={from_bitrate}, which contradicts n_q={n_q}")
        return from_bitrate
    return codec.max_n_q if n_q is None else n_q


def make_header(codec: Codec, n_q: int, num_samples: int, model_id: str | None = None) -> RVQHeader:
    """The ``.rvq`` header for ``num_samples`` samples encoded by ``codec`` with ``n_q`` stages."""
    return RVQHeader(sample_rate=codec.sample_rate, hop_length=codec.hop_length, n_q=n_q,
                     bits_per_code=codec.bits_per_code, num_samples=num_samples,
                     model_id=model_id if model_id is not None else codec.model_id)


def check_codec_matches(header: RVQHeader, codec: Codec, model_id: str | None = None) -> None:
    """Raise :class:`ModelMismatchError` unless ``codec`` is the model that wrote ``header``'s file."""
    bitstream.check_model(header, model_id if model_id is not None else codec.model_id)
    # Same id implies the same config; these guard against a hand-made header with a copied id.
    if (header.sample_rate, header.hop_length, header.bits_per_code) != (
            codec.sample_rate, codec.hop_length, codec.bits_per_code) or header.n_q > codec.max_n_q:
        raise ModelMismatchError(
            f"stream ({header.sample_rate} Hz, hop {header.hop_length}, {header.bits_per_code}-bit codes, "
            f"{header.n_q} stages) does not fit the model ({codec.sample_rate} Hz, hop {codec.hop_length}, "
            f"{codec.bits_per_code}-bit codes, up to {codec.max_n_q} stages)")
