import sys

from promptdrop.testing.chaos.cli import main

sys.exit(main())
