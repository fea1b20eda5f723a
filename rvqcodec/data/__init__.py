"""Audio file I/O and speech datasets."""
from rvqcodec.data.audio_io import AudioFile, AudioReadError, iter_audio_blocks, read_audio, write_audio
from rvqcodec.data.datasets import AudioFolderDataset, LibriSpeechDataset

__all__ = [
    "AudioFile",
    "AudioReadError",
    "AudioFolderDataset",
    "LibriSpeechDataset",
    "iter_audio_blocks",
    "read_audio",
    "write_audio",
]
