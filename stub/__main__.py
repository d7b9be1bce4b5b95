import sys

from stub.cli import main

sys.exit(main())
