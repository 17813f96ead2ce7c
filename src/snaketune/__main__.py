import sys

from snaketune.cli import main

sys.exit(main())
