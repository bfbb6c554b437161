"""python -m tilefuse.gpu_check"""

import sys

from .main import main

sys.exit(main())
