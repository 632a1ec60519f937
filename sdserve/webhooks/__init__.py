"""Webhooks: the SSRF guard, signing, one delivery attempt, and the delivery records."""
