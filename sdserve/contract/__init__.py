"""The contract: the vocabulary every process and every client shares (statuses, problems, limits)."""
