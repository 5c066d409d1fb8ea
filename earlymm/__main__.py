import sys

from earlymm.cli.main import run

sys.exit(run())
