"""Object storage on S3 and S3-compatible services (AWS, MinIO, Cloudflare R2, ...).

``S3Store`` implements the same ``ObjectStore`` interface as the local store: keys are checked
with ``check_key`` and live under an optional prefix inside one bucket; clients download results
through presigned GET URLs, so the gateway never serves bytes. Credentials always come from the
usual boto3 chain (environment, shared profile, web identity, instance or task role), never from
sdserve's settings.

Retention (``retention_days``) becomes lifecycle rules on the bucket's ``inputs/`` and ``outputs/``
prefixes where the service accepts them (``apply_retention``); where it does not, ``purge_expired``
deletes those objects once they are older than N days, and must be run periodically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

from sdserve.contract.problems import InvalidRequest, NotFound, StorageFull, Unavailable
from sdserve.settings import Settings
from sdserve.storage.base import SignedUrl, check_key

try:  # the `s3` extra; without it open_store still gives the local store
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # pragma: no cover - exercised only in installs without the extra
    HAVE_BOTO3 = False
else:
    HAVE_BOTO3 = True

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import LifecycleRuleOutputTypeDef, LifecycleRuleTypeDef

log = logging.getLogger("sdserve.store")

MAX_URL_SECONDS = 7 * 24 * 3600
"""SigV4 presigned URLs live at most 7 days."""

RETAINED_AREAS = ("inputs", "outputs")
"""Top-level key areas whose objects the retention setting expires."""

RetentionMode = Literal["lifecycle", "purge", "off"]

_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_LIFECYCLE = {"NoSuchLifecycleConfiguration"}
_FULL = {"QuotaExceeded", "XMinioStorageFull", "EntityTooLarge", "InsufficientStorage"}
_DELETE_BATCH = 1000  # S3's DeleteObjects limit
_PROBE_NAME = ".sdserve-ready"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error.get('Code', 'error')} (HTTP {status}): {error.get('Message', '')}".strip()
    return f"{exc.__class__.__name__}: {exc}"


class S3Store:
    """Objects in one S3 bucket under an optional prefix; presigned, expiring GET URLs."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "auto",
        retention_days: int | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        if not HAVE_BOTO3:
            raise RuntimeError(
                "the S3 store needs boto3: install sdserve with the `s3` extra (pip install 'sdserve[s3]')"
            )
        if not bucket:
            raise ValueError("S3Store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.retention_days = retention_days
        session = boto3.session.Session()

        def client(attempts: int, endpoint: str | None = endpoint_url) -> S3Client:
            config = Config(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "total_max_attempts": attempts},
            )
            return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)

        self._s3 = client(max_attempts)
        # Readiness probes must answer fast when the endpoint is down: one attempt, no backoff.
        self._probe = client(1, endpoint_url)
        # Presigning makes no request; it only needs the host the clients will use (SigV4 signs it).
        self._signer = client(1, public_endpoint_url) if public_endpoint_url else self._s3

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """The store the settings describe (``SDSERVE_S3_*``, ``SDSERVE_RETENTION_DAYS``)."""
        if not settings.s3_bucket:
            raise ValueError("SDSERVE_STORE=s3 needs SDSERVE_S3_BUCKET (the bucket that holds inputs and outputs)")
        endpoint = str(settings.s3_endpoint_url).rstrip("/") if settings.s3_endpoint_url else None
        # SDSERVE_S3_PUBLIC_ENDPOINT_URL: proposed setting (docs/operations.md); read only where it exists.
        public = settings.s3_public_endpoint_url
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=endpoint,
            public_endpoint_url=str(public).rstrip("/") if public else None,
            region=settings.s3_region,
            addressing_style=settings.s3_addressing_style,
            retention_days=settings.retention_days,
        )

    # --- keys --------------------------------------------------------------------------------
    def object_name(self, key: str) -> str:
        """The bucket key that holds an object (the prefix, then the checked key)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _area(self, name: str) -> str:
        return f"{self.prefix}/{name}/" if self.prefix else f"{name}/"

    def __repr__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"S3Store({where!r}, endpoint={self.endpoint_url!r})"

    # --- ObjectStore -------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self.object_name(key)
        try:
            self._s3.put_object(Bucket=self.bucket, Key=name, Body=data, ContentType=content_type)
        except ClientError as exc:
            if _error_code(exc) in _FULL:
                raise StorageFull(f"{self!r} is full: cannot write {key!r}: {_describe(exc)}", retry_after=30) from exc
            raise Unavailable(f"cannot write {key!r} to {self!r}: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"cannot write {key!r} to {self!r}: {_describe(exc)}") from exc

    def get(self, key: str) -> bytes:
        name = self.object_name(key)
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=name)
            return response["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise NotFound(f"no object {key!r}") from None
            raise Unavailable(f"cannot read {key!r} from {self!r}: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"cannot read {key!r} from {self!r}: {_describe(exc)}") from exc

    def exists(self, key: str) -> bool:
        name = self.object_name(key)
        try:
            self._s3.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise Unavailable(f"cannot look up {key!r} in {self!r}: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"cannot look up {key!r} in {self!r}: {_describe(exc)}") from exc
        return True

    def delete(self, key: str) -> bool:
        existed = self.exists(key)
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except (ClientError, BotoCoreError) as exc:
            raise Unavailable(f"cannot delete {key!r} from {self!r}: {_describe(exc)}") from exc
        return existed

    def delete_prefix(self, prefix: str) -> int:
        folder = self.object_name(prefix.rstrip("/")) + "/"
        try:
            return self._delete_names(self._list(folder))
        except (ClientError, BotoCoreError) as exc:
            raise Unavailable(f"cannot delete {prefix!r} from {self!r}: {_describe(exc)}") from exc

    def signed_url(self, key: str, *, expires_in: int, base_url: str = "") -> SignedUrl:
        """A presigned GET URL valid for ``expires_in`` seconds (``base_url`` is not used)."""
        name = self.object_name(key)
        if not 1 <= expires_in <= MAX_URL_SECONDS:
            raise InvalidRequest(f"presigned URLs live 1 s to 7 days, not {expires_in} s")
        # Taken before signing: X-Amz-Date is this second or a later one, so the URL lives at least
        # until expires_at. (Role or session credentials end it sooner, when they expire.)
        now = int(time.time())
        url = self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=expires_in
        )
        return SignedUrl(url=url, expires_at=now + expires_in)

    def check(self) -> None:
        """Raise Unavailable unless the bucket answers and accepts a write under our prefix."""
        name = f"{self.prefix}/{_PROBE_NAME}" if self.prefix else _PROBE_NAME
        try:
            self._probe.put_object(Bucket=self.bucket, Key=name, Body=b"ok", ContentType="text/plain")
        except ClientError as exc:
            raise Unavailable(f"{self!r} refuses writes: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"{self!r} is unreachable: {_describe(exc)}") from exc

    # --- retention ---------------------------------------------------------------------------
    def rule_ids(self) -> dict[str, str]:
        """Lifecycle rule id per retained area prefix (stable, so re-applying replaces, never adds)."""
        return {self._area(area): f"sdserve-retention:{self._area(area)}" for area in RETAINED_AREAS}

    def apply_retention(self) -> RetentionMode:
        """Install the lifecycle rules for ``retention_days``; say how retention will happen.

        ``lifecycle``: the bucket expires the objects itself. ``purge``: the service refused (or
        silently ignored) the rules, so ``purge_expired`` must run periodically. ``off``: no
        retention is configured. Other rules on the bucket are kept.
        """
        days = self.retention_days
        if days is None:
            return "off"
        ids = self.rule_ids()
        try:
            kept = [rule for rule in self._lifecycle_rules() if rule.get("ID") not in ids.values()]
            ours: list[Any] = [
                {
                    "ID": rule_id,
                    "Filter": {"Prefix": area},
                    "Status": "Enabled",
                    "Expiration": {"Days": days},
                }
                for area, rule_id in ids.items()
            ]
            self._s3.put_bucket_lifecycle_configuration(
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": cast("list[LifecycleRuleTypeDef]", kept + ours)},
            )
            installed = {
                rule.get("ID"): rule
                for rule in self._lifecycle_rules()
                if rule.get("Expiration", {}).get("Days") == days and rule.get("Status") == "Enabled"
            }
        except (ClientError, BotoCoreError) as exc:
            log.warning("lifecycle rules not accepted by %r (%s): purging instead", self, _describe(exc))
            return "purge"
        if not all(rule_id in installed for rule_id in ids.values()):
            log.warning("lifecycle rules not kept by %r: purging instead", self)
            return "purge"
        log.info("retention: %r expires inputs and outputs after %d days (lifecycle rules)", self, days)
        return "lifecycle"

    def purge_expired(self, now: float | None = None) -> int:
        """Delete inputs and outputs last written more than ``retention_days`` before ``now``.

        The same rule a lifecycle expiration applies, for services without lifecycle support;
        returns how many objects went (0 when no retention is configured).
        """
        if self.retention_days is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        deleted = 0
        try:
            for area in RETAINED_AREAS:
                deleted += self._delete_names(self._list(self._area(area), older_than=cutoff))
        except (ClientError, BotoCoreError) as exc:
            raise Unavailable(f"cannot purge {self!r}: {_describe(exc)}") from exc
        if deleted:
            log.info("retention: purged %d objects older than %d days from %r", deleted, self.retention_days, self)
        return deleted

    # --- helpers -----------------------------------------------------------------------------
    def _lifecycle_rules(self) -> list[LifecycleRuleOutputTypeDef]:
        try:
            response = self._s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) in _NO_LIFECYCLE:
                return []
            raise
        return list(response.get("Rules", []))

    def _list(self, prefix: str, *, older_than: float | None = None) -> Iterator[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                if older_than is not None and item["LastModified"].timestamp() >= older_than:
                    continue
                yield item["Key"]

    def _delete_names(self, names: Iterator[str]) -> int:
        count = 0
        batch: list[str] = []
        for name in names:
            batch.append(name)
            if len(batch) == _DELETE_BATCH:
                count += self._delete_batch(batch)
                batch = []
        if batch:
            count += self._delete_batch(batch)
        return count

    def _delete_batch(self, batch: list[str]) -> int:
        response = self._s3.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise Unavailable(
                f"{len(errors)} objects not deleted from {self!r}: "
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
            )
        return len(batch)
