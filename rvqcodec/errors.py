"""The exceptions that mark a problem with what the user gave rvqcodec, as opposed to a bug in rvqcodec.

:class:`InputError` (a ``ValueError``) is raised for an unusable input file or content (unreadable audio, NaN
samples, a damaged ``.rvq`` file: :class:`rvqcodec.data.audio_io.AudioReadError` and
:class:`rvqcodec.bitstream.BitstreamError` derive from it), an output that must not be written (an input file, a
folder, an unwritable folder) or an option value the library cannot honour (a resampling ratio, an audio format).
The command line reports it as one line naming the file; any other ``ValueError`` is a programming error and
keeps its traceback. :class:`UserError` is what a command raises for a mistake on its command line; the command
line prints it as one line and exits with code 2.
"""
from __future__ import annotations


class InputError(ValueError):
    """The user's input (a file, its content, an output path or an option) cannot be used; one-line message."""


class UserError(Exception):
    """A mistake in the user's input to a command: printed as one line, exit code 2."""
