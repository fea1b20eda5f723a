"""``python -m rvqcodec.training CONFIG [KEY=VALUE ...]``: the ``rvqcodec train`` command run as a module, which is
how ``accelerate launch [--multi_gpu] -m rvqcodec.training ...`` and ``torchrun -m rvqcodec.training ...`` start one
training process per device (see :mod:`rvqcodec.commands.train`)."""
import sys

from rvqcodec.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
