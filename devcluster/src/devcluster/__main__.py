"""`python -m devcluster` is the `devcluster` command."""

from devcluster.cli import main

main()
