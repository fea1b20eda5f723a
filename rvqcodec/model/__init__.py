"""The codec model (a SEANet or frame-rate ConvNeXt encoder/decoder around a residual VQ) and the GAN discriminators:
tensors in, tensors out; no bitstreams, files or chunking (the layer above does those: :mod:`rvqcodec.api`)."""
from rvqcodec.model.codec import Codec, CodecConfig, CodecOutput
from rvqcodec.model.discriminators import (
    DiscriminatorConfig,
    Discriminators,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
)
from rvqcodec.model.seanet import SEANetDecoder, SEANetEncoder

__all__ = [
    "Codec",
    "CodecConfig",
    "CodecOutput",
    "DiscriminatorConfig",
    "Discriminators",
    "MultiPeriodDiscriminator",
    "MultiScaleSTFTDiscriminator",
    "SEANetDecoder",
    "SEANetEncoder",
]
