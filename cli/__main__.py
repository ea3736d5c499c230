"""`python -m cli` runs the bizra-batch command."""

from cli.app import main

main()
