import sys

from netspec.cli import main

sys.exit(main())
