import sys

from earlymm.cli.main import main

sys.exit(main())
