"""``python -m conscience.cli``: the same as the ``conscience`` command."""

import sys

from conscience.cli.commands import main

sys.exit(main())
