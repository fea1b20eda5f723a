"""The codec model: a SEANet or frame-rate ConvNeXt encoder/decoder around a residual VQ. Tensors in, tensors out;
no bitstreams, files or chunking (the layer above does those: :mod:`rvqcodec.api`). The GAN discriminators are
training code: import them from :mod:`rvqcodec.model.discriminators` (this package does not, so that compressing
never loads them)."""
from rvqcodec.model.codec import Codec, CodecConfig, CodecOutput
from rvqcodec.model.seanet import SEANetDecoder, SEANetEncoder

__all__ = ["Codec", "CodecConfig", "CodecOutput", "SEANetDecoder", "SEANetEncoder"]
