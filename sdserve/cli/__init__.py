"""The `sdserve` command line: the process entry points, `sdserve up`, and `sdserve generate` (a client)."""
