"""The codec model: SEANet encoder/decoder around a residual VQ, and the GAN discriminators."""
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
