import sys

from introspect.cli import main

sys.exit(main())
