"""The ``conscience`` command: the top layer, which alone may import every other one."""

from conscience.cli.commands import main

__all__ = ["main"]
