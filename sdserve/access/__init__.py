"""Who may call: API keys (their hashes, scopes and limits)."""
