"""The default of every quantizer option, read from the one constructor that documents it.

:class:`~rvqcodec.quantize.codebook.EuclideanCodebook` owns the codebook options (``learning``, ``decay``,
``kmeans_iters``, ``dead_code_threshold``, ...), :class:`~rvqcodec.quantize.vq.VectorQuantizer` the stage options
(``codebook_dim``, ``estimator``, ``commitment_weight``, ...) and :class:`~rvqcodec.quantize.residual.ResidualVQ`
the stack's (``residual_grad``, ``quantizer_dropout``); the classes above a constructor forward the options they
do not use with ``**kwargs``. :data:`QUANTIZER_DEFAULTS` collects the defaults from those signatures, so that a
configuration (``CodecConfig``) refers to them instead of repeating them.
"""
from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any

from .codebook import EuclideanCodebook
from .residual import ResidualVQ
from .vq import VectorQuantizer


def _defaults(*constructors: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in constructors:
        for name, parameter in inspect.signature(cls).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                out[name] = parameter.default
    return out


QUANTIZER_DEFAULTS = MappingProxyType(_defaults(EuclideanCodebook, VectorQuantizer, ResidualVQ))
"""Option name -> default, for every keyword option of the codebook, a stage and the residual stack."""
