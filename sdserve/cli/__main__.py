"""``python -m sdserve.cli``: the `sdserve` command (how `sdserve up` starts its children)."""

from sdserve.cli.main import main

main()
