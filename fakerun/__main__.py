"""`python -m fakerun`: the same launcher as the `fakerun` command."""

import sys

from fakerun.main import main

sys.exit(main())
