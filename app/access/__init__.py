"""Who may call and how much: authentication, admission (rate limits, caps), Idempotency-Keys."""
