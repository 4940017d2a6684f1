"""`python -m looplab.cli`: the `looplab` command."""

import sys

from looplab.cli import command

sys.exit(command())
