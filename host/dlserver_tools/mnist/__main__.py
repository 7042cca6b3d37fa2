"""``python -m dlserver_tools.mnist``: the same as ``dl-server-mnist``."""

import sys

from .cli import main

sys.exit(main())
