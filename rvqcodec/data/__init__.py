"""Audio: file I/O and resampling (:mod:`rvqcodec.data.audio_io`, what compressing needs) and, for training only,
speech datasets (:mod:`rvqcodec.data.datasets`), preloaded clips (:mod:`rvqcodec.data.clips`) and augmentation
(:mod:`rvqcodec.data.augment`), imported from their modules (this package imports none of them, so that
compressing never loads them)."""
from rvqcodec.data.audio_io import AudioFile, AudioReadError, iter_audio_blocks, read_audio, write_audio

__all__ = ["AudioFile", "AudioReadError", "iter_audio_blocks", "read_audio", "write_audio"]
