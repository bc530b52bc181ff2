#!/usr/bin/env python3
"""The compose scripts' name for ``conscience adapter`` (engine/publish.py): list, publish,
record and restore the adapter the stack generates with."""

from __future__ import annotations

import sys

from conscience.engine.publish import (  # noqa: F401  (the scripts' and tests' names)
    AdapterError,
    list_adapters,
    main,
    publish,
    read_current,
    record,
    restore,
    write_current,
)

if __name__ == "__main__":
    sys.exit(main())
