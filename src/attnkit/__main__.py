"""`python -m attnkit`: the `attnkit` command, for environments without its script on PATH."""

import sys

from attnkit.cli import main

sys.exit(main())
