"""`python -m genoembed`: the command line."""

from genoembed.cli import main

main()
