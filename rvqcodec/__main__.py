"""``python -m rvqcodec COMMAND ...``: the ``rvqcodec`` command line (:mod:`rvqcodec.cli`)."""
import sys

from rvqcodec.cli import main

sys.exit(main())
