"""Lengths of audio that several modules share, each named once (no torch: the commands read them for their
``--help`` defaults without loading the model stack).

* :data:`CHUNK_SECONDS`: how long inputs are cut for bounded-memory coding (:class:`rvqcodec.chunking.ChunkConfig`,
  ``rvqcodec compress --chunk-seconds``);
* :data:`READ_BLOCK_SECONDS`: how much of an audio file is read per step, at the file's own rate (the chunk engine's
  file reading, :mod:`rvqcodec.scoring`);
* :data:`MAX_SHIFT_SECONDS`: the alignment window, the largest delay searched for before scoring a decoded signal
  against its reference (:mod:`rvqcodec.scoring`, ``rvqcodec eval --max-shift-ms``, the quality benchmarks).
"""
from __future__ import annotations

CHUNK_SECONDS = 10.0
READ_BLOCK_SECONDS = 5.0
MAX_SHIFT_SECONDS = 0.1
