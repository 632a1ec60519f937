"""Every Redis key and RQ queue name sdserve uses, in one place.

All keys start with the deployment's prefix (``Settings.key_prefix``) so several deployments, or
the test suite, can share one Redis. RQ's own keys (``rq:job:<id>``, ``rq:queue:<name>``) are RQ's;
the queue *names* we give it carry the prefix too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    def job(self, job_id: str) -> str:
        """Hash: the job record (the source of truth for status and results)."""
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        """Stream: the job's events (queued, started, progress, terminal)."""
        return f"{self.prefix}:job:{job_id}:events"

    def jobs_index(self, owner: str) -> str:
        """Sorted set: one caller's job ids scored by creation time (for listing)."""
        return f"{self.prefix}:jobs:{owner}"

    def active(self, owner: str) -> str:
        """Set: one caller's jobs that have not ended (queued or running)."""
        return f"{self.prefix}:active:{owner}"

    def running(self) -> str:
        """Sorted set: running job ids scored by when they (last) started; the janitor watches it."""
        return f"{self.prefix}:running"

    def paused(self) -> str:
        """Set: models whose queues workers do not take jobs from (admin pause)."""
        return f"{self.prefix}:paused"

    def registry_version(self) -> str:
        """Counter: bumped by a registry reload, so every process reloads its registry."""
        return f"{self.prefix}:registry:version"

    def webhooks_due(self) -> str:
        """Sorted set: webhook delivery ids scored by when they are due (or until when they are leased)."""
        return f"{self.prefix}:webhooks:due"

    def delivery_prefix(self) -> str:
        """Prefix of the delivery hashes (``<prefix>:delivery:<job>.<event>``)."""
        return f"{self.prefix}:delivery:"

    def delivery(self, delivery_id: str) -> str:
        """Hash: one webhook delivery (job, event, attempt count, body data)."""
        return f"{self.delivery_prefix()}{delivery_id}"

    def delivery_log(self, job_id: str) -> str:
        """List: every delivery attempt of a job's webhooks, oldest first."""
        return f"{self.prefix}:job:{job_id}:deliveries"

    def idempotency(self, owner: str, key_hash: str) -> str:
        """String: the job an Idempotency-Key (hashed, per caller) created."""
        return f"{self.prefix}:idem:{owner}:{key_hash}"

    def upload(self, upload_id: str) -> str:
        """Hash: an uploaded (or inline) input image: where it lies and what it is."""
        return f"{self.prefix}:upload:{upload_id}"

    def queue_name(self, model: str) -> str:
        """The RQ queue of one model (RQ stores it under ``rq:queue:<name>``)."""
        return f"{self.prefix}:{model}"

    def workers(self) -> str:
        """Sorted set: live worker names scored by their last heartbeat."""
        return f"{self.prefix}:workers"

    def served_models(self) -> str:
        """Sorted set: every model a worker has served, scored by when it was last seen serving it."""
        return f"{self.prefix}:models:served"

    def worker(self, name: str) -> str:
        """Hash: what one worker serves and whether it is ready (expires without heartbeats)."""
        return f"{self.prefix}:worker:{name}"
