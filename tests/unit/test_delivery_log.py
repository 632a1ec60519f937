"""What a tenant sees of a delivery attempt: everything for public receivers (their own servers), only "it
failed" for allow-listed internal ones (status, error class and exact timing would map the internal network)."""

from __future__ import annotations

from sdserve.webhooks.delivery import AttemptResult


def test_a_failure_against_an_internal_target_is_coarse() -> None:
    shown = AttemptResult(ok=False, status_code=403, error="HTTP 403", duration_ms=1234.5, trusted=True).shown()
    assert (shown.ok, shown.status_code, shown.error, shown.duration_ms) == (False, None, "delivery failed", 1000.0)
    refused = AttemptResult(ok=False, status_code=None, error="ConnectError", duration_ms=3.2, trusted=True).shown()
    assert (refused.error, refused.duration_ms) == ("delivery failed", 0.0)  # refused or answered: the same


def test_a_public_receiver_keeps_its_details() -> None:
    attempt = AttemptResult(ok=False, status_code=503, error="HTTP 503", duration_ms=812.0, retry_after=30.0)
    assert attempt.shown() == attempt


def test_a_success_is_shown_as_it_was() -> None:
    attempt = AttemptResult(ok=True, status_code=204, error=None, duration_ms=15.0, trusted=True)
    assert attempt.shown() == attempt
