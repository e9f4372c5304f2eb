"""`python -m edgekd` runs the command line."""

from edgekd.cli import main

main()
