"""Audio file I/O and speech datasets."""
from rvqcodec.data.audio_io import AudioFile, AudioReadError, iter_audio_blocks, read_audio, write_audio
from rvqcodec.data.clips import PreloadedClips
from rvqcodec.data.datasets import AudioFileListDataset, AudioFolderDataset, LibriSpeechDataset

__all__ = [
    "AudioFile",
    "AudioReadError",
    "AudioFileListDataset",
    "AudioFolderDataset",
    "LibriSpeechDataset",
    "PreloadedClips",
    "iter_audio_blocks",
    "read_audio",
    "write_audio",
]
