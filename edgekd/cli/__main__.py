"""`python -m edgekd.cli` runs the command line."""

from edgekd.cli import main

main()
