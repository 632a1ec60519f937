"""The webhook dispatcher: a process of its own (beside ``app`` and ``worker``) that sends signed webhook
deliveries with retries, and runs the janitor so that recovery does not need a live worker."""
