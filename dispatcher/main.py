"""The dispatcher process's composition root: `sdserve webhooks`.

It sends webhook deliveries and sweeps for jobs whose worker died (the janitor), so recovery needs no live
worker. Its store is the deployment's store (``open_store``: presigned S3 URLs with ``SDSERVE_STORE=s3``),
so the links in its webhooks work wherever the results live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import redis
import redis.asyncio as aioredis
import redis.exceptions

from dispatcher.dispatcher import Dispatcher
from sdserve.jobs.janitor import Janitor
from sdserve.keys import Keys
from sdserve.kinds import builtin_kinds
from sdserve.observe.logs import configure_logging
from sdserve.observe.metrics import Metrics, serve_metrics
from sdserve.observe.redischeck import warn_about_redis
from sdserve.secrets import url_signing_key, webhook_signing_secret
from sdserve.settings import Settings
from sdserve.storage.factory import open_store

log = logging.getLogger("sdserve.webhooks")

SWEEP_SECONDS = 10.0


async def run(settings: Settings) -> None:
    """Send deliveries and sweep until SIGINT or SIGTERM."""
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    sync = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    metrics = Metrics()
    await asyncio.to_thread(warn_about_redis, sync, "webhooks")
    keys = Keys(settings.key_prefix)
    janitor = Janitor(sync, keys, max_attempts=settings.max_attempts, job_ttl=settings.job_ttl_seconds, metrics=metrics)
    dispatcher = Dispatcher(
        settings,
        client,
        open_store(settings, signing_key=url_signing_key(settings)),
        kinds=builtin_kinds(),
        secret=webhook_signing_secret(settings),
        metrics=metrics,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, dispatcher.stopping.set)
    serve_metrics(metrics, settings.host, settings.dispatcher_metrics_port, "dispatcher")
    log.info("webhook dispatcher ready", extra={"store": repr(dispatcher.store)})

    async def sweep() -> None:
        while not dispatcher.stopping.is_set():
            try:
                await asyncio.to_thread(janitor.sweep)
            except redis.exceptions.RedisError as exc:
                log.warning("janitor: redis unavailable (%s)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dispatcher.stopping.wait(), timeout=SWEEP_SECONDS)

    sweeper = asyncio.create_task(sweep())
    try:
        await dispatcher.run()
    finally:
        await sweeper
        await client.aclose()
        sync.close()
    log.info("webhook dispatcher stopped")


def serve(settings: Settings) -> None:
    """Entry point of `sdserve webhooks`."""
    configure_logging(settings.log_level, process="webhooks")
    asyncio.run(run(settings))
