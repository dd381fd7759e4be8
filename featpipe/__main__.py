"""``python -m featpipe`` (and ``torchrun -m featpipe``) run the command line."""

from featpipe.cli.app import run

run()
