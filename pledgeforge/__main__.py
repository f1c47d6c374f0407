"""`python -m pledgeforge`: the same as the `pledgeforge` command."""

from pledgeforge.cli import main

main()
