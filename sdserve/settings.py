"""The one settings object of every sdserve process.

Read once, in the composition root (`sdserve.cli.main`, `app.main.create_app`, `worker.main`,
`dispatcher.main`), from the environment (prefix ``SDSERVE_``) and an optional ``.env`` file, then passed
down. Nothing else in the code base reads the environment, and reading settings writes nothing: the secrets
generated when none is configured are made by ``sdserve.secrets``, called from the composition roots.
Every field is documented in the README's settings table; keep the two in step (a unit test compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sdserve.egress import AllowedHost, AllowedNetwork

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


class Settings(BaseSettings):
    """Configuration shared by the gateway, the worker and `sdserve up`."""

    model_config = SettingsConfigDict(
        env_prefix="SDSERVE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    # --- where things live -------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the queues, job records and event streams."""
    key_prefix: str = Field(default="sdserve", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    """Prefix of every Redis key and queue name sdserve owns (lets several deployments share a Redis)."""
    data_dir: Path = Path("./data")
    """Local state: the local object store, generated built-in models, the URL-signing secret, Redis files."""
    models_cache_dir: Path | None = None
    """Where built-in models are generated and cached (default: <data_dir>/models)."""
    registry_file: Path | None = None
    """TOML file listing models (and later LoRAs, embeddings, styles). Without it: the built-in models."""
    default_model: str = "demo"
    """Model used when a request names none."""

    unserved_models: Literal["refuse", "queue"] = "refuse"
    """A request for a model no worker has served lately: refuse it (503), or queue it (for scale-from-zero)."""
    served_model_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    """How long after its last worker was seen a model still counts as served (queued while workers scale up)."""

    # --- object storage ---------------------------------------------------------------------
    store: Literal["local", "s3"] = "local"
    """Where inputs and outputs live: files under data_dir (served by the gateway), or S3."""
    s3_bucket: str | None = None
    """S3 bucket (required when store is s3)."""
    s3_prefix: str = Field(default="", pattern=r"^(|[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)$")
    """Key prefix inside the bucket (lets deployments share one)."""
    s3_endpoint_url: AnyHttpUrl | None = None
    """S3-compatible endpoint (MinIO, R2, ...); unset for AWS."""
    s3_region: str | None = None
    """S3 region; unset: the usual AWS chain decides. Credentials always come from the usual chain."""
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """Bucket addressing; MinIO usually needs path."""
    s3_public_endpoint_url: AnyHttpUrl | None = None
    """S3 endpoint as clients reach it, for presigned URLs (default: s3_endpoint_url)."""
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    """Delete a job's stored objects after this many days (lifecycle rule where supported, else a purge)."""

    # --- gateway ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address the gateway binds to."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port the gateway listens on."""
    public_url: AnyHttpUrl | None = None
    """Base URL clients use to reach the gateway (for Location headers and signed file URLs).
    Unset: taken from each request's Host header."""
    url_signing_secret: SecretStr | None = None
    """HMAC key for the local store's signed URLs. Unset: generated once and kept in data_dir."""
    url_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    """Lifetime of a signed result URL (1 h by default, 7 days at most)."""
    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=3600)
    """How long job records stay in Redis after they are created."""
    max_body_bytes: int = Field(default=40 * 1024 * 1024, ge=1024 * 1024, le=512 * 1024 * 1024)
    """Largest request body the gateway reads (413 beyond); large images go through POST /v1/uploads."""
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """A request's line and headers must arrive within this (else the connection is closed)."""
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """A request's body must arrive within this (else 408 and the connection is closed)."""
    upload_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    """How long an upload id stays usable in new jobs."""
    redis_timeout_seconds: float = Field(default=1.5, gt=0, le=10)
    """Socket timeout for the gateway's Redis calls, so a Redis outage answers 503 instead of hanging."""
    redis_max_connections: int = Field(default=64, ge=4, le=10_000)
    """Connections one gateway process keeps to Redis; requests beyond wait for a free one."""
    redis_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """How long a request waits for a free Redis connection before it is answered 503 `overloaded`."""

    api_keys_file: Path | None = None
    """TOML file of API keys (their SHA-256, scopes, limits): see `sdserve keys new`."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """API keys as `name:sha256[:scope+scope]` (comma separated); more can come from the keys file."""
    rate_limit_per_minute: int = Field(default=120, ge=1)
    """Job creations and uploads per minute per key (token bucket), unless the key sets its own."""
    rate_limit_burst: int = Field(default=30, ge=1)
    """Bucket size of the per-key rate limit, unless the key sets its own."""
    max_active_jobs_per_key: int = Field(default=100, ge=1)
    """Queued + running jobs one key may have at once, unless the key sets its own (429 beyond)."""
    max_queue_depth: int = Field(default=1000, ge=1)
    """Jobs waiting in one model's queue beyond which new ones are refused (503 + Retry-After)."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins browsers may call the API from (comma separated); empty: no CORS headers at all."""
    max_attempts: int = Field(default=3, ge=1, le=10)
    """Runs a job gets when its worker dies under it; then it fails with `worker-lost`."""
    max_wait_seconds: int = Field(default=60, ge=0, le=300)
    """Longest `Prefer: wait=N` a request may hold the connection for."""
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    """How long an Idempotency-Key keeps answering with the job it created."""

    # --- webhooks ----------------------------------------------------------------------------
    webhook_secret: SecretStr | None = None
    """Standard Webhooks signing secret (`whsec_<base64>`). Unset: generated once and kept in data_dir."""
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    """Seconds before each retry of a terminal event (comma separated; ±20 % jitter): about 27 h in all."""
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=15)
    """Time one delivery attempt may take."""
    webhook_allowed_ports: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [80, 443, 8080, 8443])
    """Ports callback URLs may use (comma separated)."""
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Callback hosts trusted on the ports named: `host:port` or `host:low-high`, no address check (comma separated)."""
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Networks trusted on the ports named: `CIDR:port` or `CIDR:low-high`, e.g. `10.0.0.0/8:8080` (comma separated)."""
    webhook_redeliveries_per_minute: int = Field(default=10, ge=1, le=10_000)
    """Redeliveries (`POST …/webhook-deliveries/redeliver`) one key may ask for per minute (bursts of 5)."""
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    """Deliveries one dispatcher sends at once."""

    # --- worker -----------------------------------------------------------------------------
    worker_models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["tiny", "demo"])
    """Models one worker serves (comma separated in the environment). The first is warmed first."""
    training_models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["demo"])
    """Models this worker also trains LoRAs and embeddings on (comma separated; empty: no trainings). A training
    holds the worker while it runs; image jobs of its queues go first when both wait."""
    training_compile: Literal["auto", "off", "regional", "full", "full-cudagraphs"] = "auto"
    """How trainings compile their step: auto is regional (the UNet's transformer blocks) on CUDA, eager elsewhere;
    full compiles the whole UNet, full-cudagraphs adds CUDA graphs (docs/benchmarks.md measures each)."""
    training_timeout_seconds: int = Field(default=6 * 3600, ge=60)
    """Ceiling on one training run (a run resumed from a checkpoint after a lost worker gets it afresh)."""
    worker_name: str | None = None
    """Name of this worker in Redis (default: host name and pid)."""
    device: Device = "auto"
    """Torch device for the worker: auto picks cuda, then mps, then cpu."""
    dtype: DType = "auto"
    """Weights and activations dtype: auto is float16 on cuda, float32 elsewhere."""
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=60)
    """How often a busy worker proves it is alive."""
    job_timeout_seconds: int = Field(default=600, ge=10)
    """Ceiling on one job's run time (each job's own timeout is derived from its size and steps)."""
    timeout_seconds_per_megapixel_step: float = Field(default=1.0, gt=0)
    """A job's timeout: 60 s plus this for every step of every megapixel it makes (capped by the ceiling)."""
    model_memory_budget_mb: int | None = Field(default=None, ge=1)
    """Memory the resident models of one worker may take; least recently used ones are unloaded beyond it."""
    max_loras: int = Field(default=8, ge=1, le=256)
    """LoRA adapters kept loaded per model (least recently used unloaded first)."""
    channels_last: bool = True
    """Keep UNet and VAE activations channels-last on CUDA (faster convolutions on tensor cores)."""
    fuse_qkv: bool = False
    """Fuse each attention's q/k/v projections into one matmul (faster; undone while LoRAs are applied)."""
    compile_mode: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    """torch.compile the UNet and the VAE decoder at warm-up; reduce-overhead adds CUDA graphs."""
    compile_batch_sizes: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [1])
    """Images per pass the warm-up compiles for (comma separated); other sizes compile on first use."""
    compile_cache_dir: Path | None = None
    """Where compiled kernels are cached across restarts (default: <data_dir>/compile-cache)."""
    vae_tiling_min_pixels: int = Field(default=2048 * 2048, ge=64 * 64)
    """Decode images of at least this many pixels tile by tile (saves memory; slower below this)."""
    max_batch_images: int = Field(default=1, ge=1, le=64)
    """Dynamic batching: images one forward pass may carry across compatible queued jobs (1: no batching)."""
    batch_linger_ms: int = Field(default=15, ge=0, le=1000)
    """How long a worker waits for more compatible jobs when the queue already holds some."""
    preview_every_steps: int = Field(default=5, ge=0, le=150)
    """Send a small preview image with every Nth progress event (0: never)."""
    ready_file: Path | None = None
    """File the worker (and the dispatcher) touches once ready and on every heartbeat; probes read its age."""
    warmup: bool = True
    """Run one small generation per model before reporting ready."""
    torch_threads: int | None = Field(default=None, ge=1)
    """CPU threads torch may use (default: torch's own choice)."""

    # --- sdserve up --------------------------------------------------------------------------
    start_redis: Literal["auto", "never"] = "auto"
    """`sdserve up`: start a local redis-server child when none answers at a local URL (auto), or never."""
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    """Port of a worker's Prometheus /metrics (0: none). The gateway serves its own at /metrics."""
    dispatcher_metrics_port: int = Field(default=9102, ge=0, le=65535)
    """Port of the webhook dispatcher's Prometheus /metrics (0: none)."""
    otel_enabled: bool = False
    """Trace gateway → queue → worker → store with OpenTelemetry (needs the `otel` extra)."""
    otel_endpoint: str | None = None
    """OTLP/HTTP endpoint for traces (default: the exporter's own, e.g. OTEL_EXPORTER_OTLP_ENDPOINT)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of every process."""

    @field_validator(
        "worker_models",
        "training_models",
        "compile_batch_sizes",
        "api_keys",
        "cors_origins",
        "webhook_retry_schedule",
        "webhook_allowed_ports",
        "webhook_allowed_hosts",
        "webhook_allowed_networks",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    # --- derived values ----------------------------------------------------------------------
    @property
    def objects_dir(self) -> Path:
        """Root of the local object store."""
        return self.data_dir / "objects"

    @property
    def models_dir(self) -> Path:
        """Where built-in models are generated and cached."""
        return self.models_cache_dir or self.data_dir / "models"

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("webhook_secret must look like whsec_<base64>")
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            AllowedNetwork.parse(entry)
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            AllowedHost.parse(entry)
        return value

    def public_base_url(self) -> str:
        """Where clients reach the gateway, for processes that have no request to ask (the dispatcher)."""
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104 - display only
        return f"http://{host}:{self.port}"
