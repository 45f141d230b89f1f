"""`python -m gpmctl`: the same as the `gpmctl` command."""

from gpmctl.cli import main

main()
