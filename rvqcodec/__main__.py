import sys

from rvqcodec.cli import main

sys.exit(main())
