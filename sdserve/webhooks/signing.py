"""Standard Webhooks signing: the ``webhook-signature`` header, made with the standardwebhooks library."""

from __future__ import annotations

from datetime import datetime

from standardwebhooks.webhooks import Webhook


def sign(secret: str, webhook_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header value (``v1,<base64 HMAC-SHA256>``) for a body."""
    return str(Webhook(secret).sign(webhook_id, timestamp, body))
