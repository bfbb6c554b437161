"""`python -m tilefuse.cli`: the same as the `tilefuse` command."""

import sys

from .main import main

sys.exit(main())
