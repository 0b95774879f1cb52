import sys

from vitcore.cli import main

sys.exit(main())
