"""Every Redis key and RQ queue name sdserve uses, built here and nowhere else.

All keys start with the deployment's prefix (``Settings.key_prefix``) so several deployments, or the test
suite, can share one Redis. RQ's own keys (``rq:job:<id>``, ``rq:queue:<name>``) follow RQ's layout; the
queue *names* we give RQ carry the prefix too. Lua scripts never build a key: they get each one through
``KEYS`` (or, for keys that depend on what the script finds, a prefix from here through ``ARGV``).
"""

from __future__ import annotations

from dataclasses import dataclass

RQ_QUEUE_PREFIX = "rq:queue:"
"""RQ's namespace for queue lists (``rq.Queue.redis_queue_namespace_prefix``; a unit test holds them equal)."""


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str

    # --- jobs ----------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """Hash: the job record (the source of truth for status and results)."""
        return f"{self.prefix}:job:{job_id}"

    def job_prefix(self) -> str:
        """What every job record key starts with (``job(id)`` is this plus the id): for scripts that find ids."""
        return f"{self.prefix}:job:"

    def events(self, job_id: str) -> str:
        """Stream: the job's events (queued, started, progress, terminal)."""
        return f"{self.prefix}:job:{job_id}:events"

    def delivery_log(self, job_id: str) -> str:
        """List: every delivery attempt of a job's webhooks, oldest first."""
        return f"{self.prefix}:job:{job_id}:deliveries"

    def index(self, kind: str, owner: str) -> str:
        """Sorted set: one caller's jobs of one kind, scored by creation time (for listing)."""
        return f"{self.prefix}:index:{kind}:{owner}"

    def active(self, owner: str) -> str:
        """Set: one caller's jobs (of every kind) that have not ended (queued or running)."""
        return f"{self.prefix}:active:{owner}"

    def running(self) -> str:
        """Sorted set: running job ids scored by when they (last) started (Redis time); the janitor watches it."""
        return f"{self.prefix}:running"

    def idempotency(self, owner: str, key_hash: str) -> str:
        """String: the job an Idempotency-Key (hashed, per caller) created."""
        return f"{self.prefix}:idem:{owner}:{key_hash}"

    # --- queues --------------------------------------------------------------------------------
    def queue_name(self, queue: str) -> str:
        """The RQ queue name of one of the engine's queues (e.g. a model's): RQ keeps it under ``rq:queue:<name>``."""
        return f"{self.prefix}:{queue}"

    def queue_key(self, queue: str) -> str:
        """The Redis list of one queue (RQ's key for it)."""
        return f"{RQ_QUEUE_PREFIX}{self.queue_name(queue)}"

    def queue_of_key(self, queue_key: str) -> str:
        """The engine's queue name back from its list key (inverse of ``queue_key``)."""
        return queue_key.removeprefix(f"{RQ_QUEUE_PREFIX}{self.prefix}:")

    def claimed(self, queue: str) -> str:
        """List: jobs taken from a queue by a worker that has not started them yet (RQ's intermediate queue)."""
        return f"{self.queue_key(queue)}:intermediate"

    def bell(self, queue: str) -> str:
        """List of at most one token: rung when a queue gets a job, so idle workers wake at once."""
        return f"{self.queue_key(queue)}:bell"

    def rq_queues(self) -> str:
        """RQ's set of every known queue key (shared by every RQ user of the Redis)."""
        return "rq:queues"

    def paused(self) -> str:
        """Set: queues (by engine name) that workers take no job from (admin pause)."""
        return f"{self.prefix}:paused"

    # --- workers -------------------------------------------------------------------------------
    def workers(self) -> str:
        """Sorted set: worker names scored by the Redis time until which their last heartbeat keeps them alive."""
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        """String (JSON): what one worker serves and whether it is ready (expires without heartbeats)."""
        return f"{self.prefix}:worker:{name}"

    def served_queues(self) -> str:
        """Sorted set: every queue a worker has served, scored by when (Redis time) it was last seen serving it."""
        return f"{self.prefix}:queues:served"

    def janitor_lock(self) -> str:
        """String: held by the one process sweeping right now."""
        return f"{self.prefix}:janitor:lock"

    def janitor_claimed_seen(self) -> str:
        """Hash: job id → when (Redis time) the janitor first saw it taken but not started."""
        return f"{self.prefix}:janitor:claimed"

    def registry_version(self) -> str:
        """Counter: bumped by a registry reload, so every process reloads its registry."""
        return f"{self.prefix}:registry:version"

    # --- webhooks ------------------------------------------------------------------------------
    def webhooks_due(self) -> str:
        """Sorted set: webhook delivery ids scored by when they are due (or until when they are leased)."""
        return f"{self.prefix}:webhooks:due"

    def delivery_prefix(self) -> str:
        """Prefix of the delivery hashes (``<prefix>:delivery:<job>.<event>``)."""
        return f"{self.prefix}:delivery:"

    def delivery(self, delivery_id: str) -> str:
        """Hash: one webhook delivery (job, event, attempt count, body data)."""
        return f"{self.delivery_prefix()}{delivery_id}"

    def redeliveries(self, owner: str) -> str:
        """Hash: a caller's token bucket for redelivery requests."""
        return f"{self.prefix}:ratelimit:redeliver:{owner}"

    # --- callers -------------------------------------------------------------------------------
    def ratelimit(self, owner: str) -> str:
        """Hash: a caller's token bucket for creating work."""
        return f"{self.prefix}:ratelimit:{owner}"

    def upload(self, upload_id: str) -> str:
        """String (JSON): an uploaded (or inline) input: where it lies, what it is, whose it is."""
        return f"{self.prefix}:upload:{upload_id}"

    def dataset(self, upload_id: str) -> str:
        """String (JSON): an uploaded training dataset (a checked zip): its manifest's key, whose it is."""
        return f"{self.prefix}:dataset:{upload_id}"

    def dataset_by_hash(self, owner: str, sha256: str) -> str:
        """String: one caller's dataset upload with this dataset hash (a resent dataset is stored once)."""
        return f"{self.prefix}:dataset-hash:{owner}:{sha256}"

    # --- adapters owned by a key ---------------------------------------------------------------
    def owned_adapters(self, owner: str) -> str:
        """Hash: one caller's adapter names → JSON (a reservation while its training runs, then the adapter)."""
        return f"{self.prefix}:owned:{owner}:adapters"

    def owned_tokens(self, owner: str) -> str:
        """Hash: one caller's embedding tokens → the name of the (reserved or trained) embedding."""
        return f"{self.prefix}:owned:{owner}:tokens"

    def owned_users(self, owner: str, name: str) -> str:
        """Sorted set: jobs accepted naming one of a caller's adapters, scored by when (Redis time) they were noted."""
        return f"{self.prefix}:owned:{owner}:users:{name}"
