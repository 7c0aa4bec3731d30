"""``python -m convgen.cli``."""
import sys

from . import main

sys.exit(main())
