"""`python -m imagejobs …` is the `imagejobs` command."""

from imagejobs.runtime.cli import main

main()
