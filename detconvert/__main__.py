import sys

from detconvert.cli import main

sys.exit(main())
