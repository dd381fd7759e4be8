"""``python -m featpipe`` (and ``torchrun -m featpipe``) run the command line."""

import sys

from featpipe.cli.app import main

sys.exit(main())
