"""Input level normalization: the gain that brings a recording to the level the codec was trained at.

Training reads every file scaled to an RMS of :data:`TARGET_RMS_DBFS` (dB re full scale, the whole file's RMS),
lowered where needed so that its peak stays at :data:`PEAK_LIMIT_DBFS`
(:class:`rvqcodec.data.datasets.AudioFileListDataset`, whose defaults these are); only the level augmentation moves
a sixth of the examples elsewhere. A quiet recording (a far microphone, a −50 dBFS phone call) reaches the codec
with its spectral detail near the bottom of what it resolves, a loud or reverberant one above what it mostly saw.
So before encoding, the whole signal is scaled by the same rule, the gain is written into the ``.rvq`` header
(format version 2, 0.5 dB steps) and the decoder divides it out: the decoded file has the input's level, not the
target's. EnCodec's 48 kHz model does the same per one-second segment.

::

    gain_db = normalizing_gain_db(rms_dbfs, peak_dbfs)   # e.g. +22.5 for a file at -45.5 dBFS RMS
    gain_db = gain_db_of(blocks)                          # the same, measured block by block

The frame-by-frame streaming encoder (:mod:`rvqcodec.realtime`) cannot know a recording's level before it
starts, and does not normalize.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from rvqcodec.bitstream import GAIN_STEP_DB

NORMALIZE_BY_DEFAULT = True
"""Whether ``compress`` (API, command line, benchmarks) normalizes unless told not to."""
TARGET_RMS_DBFS = -23.0
"""RMS of a whole file after normalization, in dBFS (``20·log10(rms)``, full scale 1.0)."""
PEAK_LIMIT_DBFS = -1.0
"""The gain is lowered so that the largest sample stays at or below this (|x| <= 0.891)."""
MAX_BOOST_DB = 40.0
"""Largest gain: a recording at −63 dBFS RMS or below is raised by this much only."""
MAX_CUT_DB = 20.0
"""Largest attenuation."""
SILENCE_DBFS = -90.0
"""At or below this RMS (digital silence, a few LSBs of 16-bit dither) the gain is 0 dB."""


def normalizing_gain_db(rms_dbfs: float, peak_dbfs: float = -math.inf) -> float:
    """Gain in dB that brings a signal of RMS ``rms_dbfs`` to :data:`TARGET_RMS_DBFS` (rounded to a multiple of
    :data:`GAIN_STEP_DB`), at most :data:`MAX_BOOST_DB` and ``PEAK_LIMIT_DBFS - peak_dbfs`` (rounded down: the peak
    stays at or below the limit), at least ``-MAX_CUT_DB``; 0 for silence (``rms_dbfs <= SILENCE_DBFS``, or -inf)."""
    if not rms_dbfs > SILENCE_DBFS:  # also NaN
        return 0.0
    to_target = round((TARGET_RMS_DBFS - rms_dbfs) / GAIN_STEP_DB) * GAIN_STEP_DB
    headroom = PEAK_LIMIT_DBFS - peak_dbfs
    below_limit = math.floor(headroom / GAIN_STEP_DB) * GAIN_STEP_DB if math.isfinite(headroom) else math.inf
    return max(min(to_target, MAX_BOOST_DB, below_limit), -MAX_CUT_DB) + 0.0  # + 0.0: never -0.0


def amplitude(gain_db: float) -> float:
    """The factor a signal is multiplied by for a gain of ``gain_db`` decibels."""
    return 10.0 ** (gain_db / 20.0)


_PIECE = 1 << 16  # samples converted to float64 at a time


class LevelMeter:
    """RMS and peak of a signal given block by block (``(t,)`` or ``(1, t)`` tensors or arrays), in O(1) memory."""

    def __init__(self) -> None:
        self._energy = 0.0
        self._count = 0
        self._peak = 0.0

    def add(self, block: torch.Tensor | np.ndarray) -> None:
        """Account for the next ``block`` of samples (summed in float64, :data:`_PIECE` samples at a time, so a
        whole signal passed as one block costs no float64 copy of it)."""
        samples = block.detach().cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        samples = samples.reshape(-1)
        for start in range(0, samples.size, _PIECE):
            piece = samples[start:start + _PIECE].astype(np.float64)
            self._energy += float(np.dot(piece, piece))
            self._peak = max(self._peak, float(np.abs(piece).max()))
        self._count += samples.size

    @property
    def rms_dbfs(self) -> float:
        """RMS so far in dBFS; -inf for no samples or digital silence."""
        power = self._energy / self._count if self._count else 0.0
        return 10.0 * math.log10(power) if power > 0 else -math.inf

    @property
    def peak_dbfs(self) -> float:
        """Largest absolute sample so far in dBFS (a full-scale sample: 0); -inf for none or silence."""
        return 20.0 * math.log10(self._peak) if self._peak > 0 else -math.inf

    @property
    def gain_db(self) -> float:
        """:func:`normalizing_gain_db` of :attr:`rms_dbfs` and :attr:`peak_dbfs`."""
        return normalizing_gain_db(self.rms_dbfs, self.peak_dbfs)


def gain_db_of(blocks: Iterable[torch.Tensor | np.ndarray]) -> float:
    """The normalizing gain (:func:`normalizing_gain_db`) of a signal given as consecutive blocks, read once."""
    meter = LevelMeter()
    for block in blocks:
        meter.add(block)
    return meter.gain_db
