"""One delivery attempt: check the URL again, POST the signed body to the checked address, read the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from sdserve.contract.problems import UnsafeWebhookUrl
from sdserve.webhooks.guard import WebhookPolicy, check_url
from sdserve.webhooks.signing import sign


@dataclass(frozen=True)
class AttemptResult:
    """One delivery attempt."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_after: float | None = None
    gone: bool = False
    trusted: bool = False
    """The target was reached through the operator's allow-list (an internal address)."""

    def shown(self) -> AttemptResult:
        """What a tenant may see of this attempt in its delivery log.

        A failure against an allow-listed (internal) target shows only that it failed: its status code, the
        kind of its error and its exact duration would tell the tenant what else listens on those addresses.
        """
        if self.ok or not self.trusted:
            return self
        return replace(self, status_code=None, error="delivery failed", duration_ms=float(round(self.duration_ms, -3)))


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


async def deliver(
    client: httpx.AsyncClient,
    *,
    url: str,
    policy: WebhookPolicy,
    secret: str,
    webhook_id: str,
    body: str,
    timeout: float,
) -> AttemptResult:
    """POST one signed delivery: 2xx succeeds; redirects fail (never followed); 410 means stop."""
    started = time.perf_counter()
    try:
        target = await check_url(url, policy)
    except UnsafeWebhookUrl as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return AttemptResult(False, None, f"refused: {exc.reason}", elapsed, gone=exc.permanent)
    parts = urlsplit(url)
    ip = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    direct = urlunsplit(parts._replace(netloc=f"{ip}:{target.port}"))
    timestamp = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "sdserve-webhooks/1",
        "host": parts.netloc.rsplit("@", 1)[-1],
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }
    extensions = {"sni_hostname": target.host} if parts.scheme == "https" else {}
    try:
        response = await client.post(
            direct, content=body.encode(), headers=headers, timeout=timeout, extensions=extensions
        )
    except httpx.TimeoutException:
        return AttemptResult(False, None, "timeout", (time.perf_counter() - started) * 1000, trusted=target.trusted)
    except httpx.HTTPError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return AttemptResult(False, None, exc.__class__.__name__, elapsed, trusted=target.trusted)
    elapsed = (time.perf_counter() - started) * 1000
    code = response.status_code
    if 200 <= code < 300:
        return AttemptResult(True, code, None, elapsed, trusted=target.trusted)
    error = "redirects are not followed" if 300 <= code < 400 else f"HTTP {code}"
    retry_after = _retry_after(response.headers.get("retry-after"))
    return AttemptResult(False, code, error, elapsed, retry_after, gone=code == 410, trusted=target.trusted)
