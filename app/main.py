"""The gateway's composition root: ``create_app(settings)`` and the `sdserve gateway` entry point."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.access.auth import require
from app.access.idempotency import Idempotency
from app.access.ratelimit import RateLimiter
from app.errors import install_error_handlers, problem_responses
from app.images.kind import IMAGES
from app.jobs.kind import GatewayKind
from app.jobs.queue import JobQueue
from app.jobs.routes import job_router
from app.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    BodyTimeoutMiddleware,
    CallerHeadersMiddleware,
    DuplicateKeysMiddleware,
    JsonBodyMiddleware,
    RequestIdMiddleware,
)
from app.openapi import build as build_openapi
from app.openapi import document_webhooks
from app.routes import admin, catalog, docs, files, health, playground, problems
from app.server import server_options
from app.state import GatewayState
from app.trainings.kind import TRAININGS
from app.uploads import routes as uploads
from app.uploads.store import Uploads
from sdserve import __version__
from sdserve.access.api_keys import KeyRing, is_loopback
from sdserve.jobs.kind import Kinds
from sdserve.keys import Keys
from sdserve.observe.logs import configure_logging
from sdserve.observe.metrics import Metrics
from sdserve.observe.redischeck import warn_about_redis
from sdserve.observe.tracing import setup_tracing
from sdserve.registry import Registry, RegistryHolder
from sdserve.registry.owned import OwnedAdapters
from sdserve.secrets import url_signing_key
from sdserve.settings import Settings
from sdserve.storage.factory import open_store
from sdserve.webhooks.guard import WebhookPolicy

log = logging.getLogger("sdserve.gateway")

DESCRIPTION = """\
sdserve turns Stable Diffusion into an HTTP API for programs.

`POST` a job (`/v1/txt2img`), get `202 Accepted` with the job and a `Location`, then poll
`GET /v1/jobs/{id}` until it has `succeeded`: each image comes as a signed, expiring URL with the seed
that reproduces it. Every error is `application/problem+json` (RFC 9457).
"""

BUILTIN_GATEWAY_KINDS: tuple[GatewayKind, ...] = (IMAGES, TRAININGS)
"""The kinds of work this gateway accepts (``create_app`` takes others: tests add a kind of their own)."""


def build_state(settings: Settings, kinds: Sequence[GatewayKind]) -> GatewayState:
    """Open the gateway's clients (lazily: nothing connects until the first call)."""
    timeout = settings.redis_timeout_seconds
    # A bounded pool that requests wait on (a burst never opens a connection storm), and one retry of a
    # command that met a connection dropped by a Redis restart (the accept script is safe to retry: a job
    # whose record exists already is not written twice).
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    client = aioredis.Redis(connection_pool=pool)
    rq_connection = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    keys = Keys(settings.key_prefix)
    store = open_store(settings, signing_key=url_signing_key(settings))
    return GatewayState(
        settings=settings,
        registry_holder=RegistryHolder(lambda: Registry.load(settings.registry_file, settings.default_model)),
        redis=client,
        rq_connection=rq_connection,
        queue=JobQueue(client, keys, rq_connection=rq_connection, job_ttl=settings.job_ttl_seconds),
        store=store,
        uploads=Uploads(client, keys, store, ttl=settings.upload_ttl_seconds),
        idempotency=Idempotency(client, keys, settings.idempotency_ttl_seconds),
        webhook_policy=WebhookPolicy.build(
            settings.webhook_allowed_ports, settings.webhook_allowed_hosts, settings.webhook_allowed_networks
        ),
        keys=KeyRing.load(settings.api_keys_file, settings.api_keys),
        rate_limiter=RateLimiter(client, keys),
        redeliver_limiter=RateLimiter(client, keys, keys.redeliveries),
        metrics=Metrics(),
        kinds=Kinds(kind.kind for kind in kinds),
        owned=OwnedAdapters(client, keys),
    )


def create_app(settings: Settings | None = None, kinds: Sequence[GatewayKind] = BUILTIN_GATEWAY_KINDS) -> FastAPI:
    """Build the gateway for these settings (read from the environment when None) and kinds of work."""
    settings = settings or Settings()
    setup_tracing(settings, "gateway")
    state = build_state(settings, kinds)
    open_mode = not len(state.keys)
    if open_mode:
        if not is_loopback(settings.host):
            raise RuntimeError(
                f"refusing to start: no API key is configured and the gateway would listen on {settings.host}; "
                "configure keys (SDSERVE_API_KEYS_FILE or SDSERVE_API_KEYS; `sdserve keys new` makes one) "
                "or bind to 127.0.0.1"
            )
        log.warning("no API key configured: the API is open to anyone who can reach %s (loopback only)", settings.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("gateway starting", extra={"version": __version__, "redis": settings.redis_url})
        await asyncio.to_thread(warn_about_redis, state.rq_connection, "gateway")
        apply_retention = getattr(state.store, "apply_retention", None)
        if apply_retention is not None:
            mode = await asyncio.to_thread(apply_retention)
            log.info("object store %r: retention %s", state.store, mode)
        yield
        await state.close()

    tags = [
        {"name": "images", "description": "Create image generation jobs."},
        {"name": "uploads", "description": "Input images, masks and training datasets, uploaded once, used by id."},
        *({"name": k.kind.collection, "description": f"Follow {k.kind.noun}s and fetch their results."} for k in kinds),
        {"name": "files", "description": "Signed downloads of stored results."},
        {"name": "catalog", "description": "Models, schedulers and styles a job may name."},
        {"name": "health", "description": "Liveness and readiness probes."},
        {"name": "problems", "description": "What each problem type means."},
        {"name": "webhooks", "description": "What a job's webhook URL receives."},
        {"name": "admin", "description": "Operations (keys with the `admin` scope)."},
    ]
    app = FastAPI(
        title="sdserve", version=__version__, description=DESCRIPTION, lifespan=lifespan, openapi_tags=tags,
        docs_url=None, redoc_url=None,
    )  # fmt: skip
    app.state.gateway = state
    install_error_handlers(app)
    jobs_scope = [Depends(require("jobs"))]
    secured = problem_responses(401, 403) if not open_mode else {}
    routers = [uploads.router, catalog.router]
    for gateway_kind in kinds:
        routers += [gateway_kind.router(), job_router(gateway_kind)]
    for router in routers:
        app.include_router(router, dependencies=jobs_scope, responses=secured)
    app.include_router(admin.router, dependencies=[Depends(require("admin"))], responses=secured)
    for module in (files, health, problems, playground, docs):
        app.include_router(module.router)
    document_webhooks(app, [k.kind for k in kinds])
    app.openapi = lambda: build_openapi(app, secured=not open_mode)  # type: ignore[method-assign]
    app.add_middleware(DuplicateKeysMiddleware)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        limits={"/v1/uploads": uploads.UPLOAD_BODY_LIMIT}
        | {path: limit for kind in kinds for path, limit in getattr(kind, "body_limits", {}).items()},
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID", "X-Request-ID",
            ],
            expose_headers=[
                "Location", "X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                "RateLimit-Reset", "Idempotent-Replayed", "Preference-Applied",
            ],
        )  # fmt: skip
    app.add_middleware(BodyTimeoutMiddleware, seconds=settings.body_timeout_seconds)
    app.add_middleware(CallerHeadersMiddleware)
    app.add_middleware(AccessLogMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def serve(settings: Settings) -> None:
    """Entry point of `sdserve gateway`: uvicorn on the configured host and port."""
    import gc

    import uvicorn

    configure_logging(settings.log_level, process="gateway")
    try:
        app = create_app(settings)
    except RuntimeError as exc:
        raise SystemExit(f"sdserve gateway: {exc}") from None
    # What exists now (modules, the app, schemas) lives as long as the process: freeze it out of the
    # cyclic collector, so the frequent collections that request garbage triggers only walk new objects.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        **server_options(settings.header_timeout_seconds),
    )
