"""One behaviour, three stores: the local store and S3Store against two real S3 servers over HTTP.

Every test of the ``ObjectStore`` contract runs against ``LocalStore`` (its signed URLs served by the
real gateway) and against ``S3Store`` talking to moto's server and to nanio on loopback (see
``conftest.py`` for what each server checks). Then the S3-only parts: prefixes, credentials from the
environment, presigned URL parameters, retention by lifecycle rules or by purge, ``open_store``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from sdserve.contract.problems import InvalidRequest, NotFound, Unavailable
from sdserve.secrets import url_signing_key
from sdserve.settings import Settings
from sdserve.storage.base import ObjectStore, attempt_prefix, check_key, input_key, outputs_prefix
from sdserve.storage.factory import open_store
from sdserve.storage.local import LocalStore
from sdserve.storage.s3 import MAX_URL_SECONDS, S3Store
from tests.conftest import free_port
from tests.store.conftest import REGION, S3Server

BAD_KEYS = ["../x", "/abs", "a//b", "a/../b", "", "a/", ".hidden", "a\\b", "a b", "outputs/j/../../etc"]


@dataclass
class Backend:
    """A store under test and what its URLs need."""

    name: str
    store: ObjectStore
    refuses_bad_urls: bool
    """Whether the server behind the URLs refuses expired or tampered ones (moto's does not)."""
    request: pytest.FixtureRequest

    @property
    def base_url(self) -> str:
        """The gateway's URL: the local store's URLs point at its /v1/files (started on first use)."""
        if self.name == "local":
            return str(self.request.getfixturevalue("gateway"))
        return "http://gateway.invalid"  # S3 URLs point at the bucket, whatever the gateway


def s3_store(server: S3Server, bucket: str, **kwargs: object) -> S3Store:
    return S3Store(bucket, endpoint_url=server.endpoint, region=REGION, addressing_style="path", **kwargs)


@pytest.fixture(params=["local", "s3-moto", "s3-nanio"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "local":
        settings: Settings = request.getfixturevalue("settings")  # the gateway serves this folder and key
        yield Backend("local", LocalStore(settings.objects_dir, url_signing_key(settings)), True, request)
        return
    request.getfixturevalue("aws_env")
    server: S3Server = request.getfixturevalue(request.param.removeprefix("s3-") + "_server")
    store = s3_store(server, server.new_bucket(), prefix="deploy/a")
    yield Backend(request.param, store, server.checks_signatures, request)


def job_id() -> str:
    return str(uuid.uuid4())


def output_key(job: str, name: str, attempt: int = 1) -> str:
    """Where a run of a job writes one of its outputs (``outputs/<job>/<attempt>/<name>``)."""
    return f"{attempt_prefix(job, attempt)}/{name}"


# --- the ObjectStore contract, on every store ------------------------------------------------------
def test_put_get_overwrite(backend: Backend) -> None:
    key = output_key(job_id(), "0.png")
    backend.store.put(key, b"one", "image/png")
    assert backend.store.get(key) == b"one"
    backend.store.put(key, b"two", "image/png")
    assert backend.store.get(key) == b"two"


def test_exists_and_missing(backend: Backend) -> None:
    key = input_key(job_id(), "init.png")
    assert not backend.store.exists(key)
    with pytest.raises(NotFound):
        backend.store.get(key)
    backend.store.put(key, b"\x89PNG", "image/png")
    assert backend.store.exists(key)
    assert not backend.store.exists(key.removesuffix(".png"))  # a prefix of a key is not the key


def test_delete_prefix_removes_only_that_job(backend: Backend) -> None:
    job = job_id()
    mine = [output_key(job, "0.png"), output_key(job, "1.png"), output_key(job, "manifest.json")]
    others = [output_key(job + "0", "0.png"), input_key(job, "init.png")]  # a longer id; the inputs
    for key in mine + others:
        backend.store.put(key, key.encode(), "application/octet-stream")
    assert backend.store.delete_prefix(outputs_prefix(job)) == 3
    assert not any(backend.store.exists(key) for key in mine)
    assert all(backend.store.get(key) == key.encode() for key in others)
    assert backend.store.delete_prefix(f"{outputs_prefix(job)}/") == 0  # idempotent; a trailing slash is fine


def test_delete_prefix_of_one_run_keeps_the_other_runs(backend: Backend) -> None:
    job = job_id()
    superseded = [output_key(job, "0.png", attempt=1), output_key(job, "manifest.json", attempt=1)]
    others = [output_key(job, "0.png", attempt=2), output_key(job, "0.png", attempt=12)]  # 12 starts with 1
    for key in superseded + others:
        backend.store.put(key, key.encode(), "application/octet-stream")
    assert backend.store.delete_prefix(attempt_prefix(job, 1)) == 2
    assert not any(backend.store.exists(key) for key in superseded)
    assert all(backend.store.get(key) == key.encode() for key in others)
    assert backend.store.delete_prefix(outputs_prefix(job)) == 2


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(backend: Backend, key: str) -> None:
    with pytest.raises(InvalidRequest):
        check_key(key)
    with pytest.raises(InvalidRequest):
        backend.store.put(key, b"x", "text/plain")
    with pytest.raises(InvalidRequest):
        backend.store.get(key)
    with pytest.raises(InvalidRequest):
        backend.store.exists(key)
    with pytest.raises(InvalidRequest):
        backend.store.signed_url(key, expires_in=60, base_url=backend.base_url)
    if key != "a/":  # delete_prefix takes a folder, so a trailing slash is allowed there
        with pytest.raises(InvalidRequest):
            backend.store.delete_prefix(key)


def test_signed_url_downloads_with_plain_http(backend: Backend) -> None:
    key = output_key(job_id(), "0.png")
    backend.store.put(key, b"\x89PNG-bytes", "image/png")
    before = time.time()
    signed = backend.store.signed_url(key, expires_in=3600, base_url=backend.base_url)
    assert before + 3600 - 1 <= signed.expires_at <= time.time() + 3600
    response = httpx.get(signed.url, timeout=10)  # no credentials, no headers: only the URL
    assert response.status_code == 200
    assert response.content == b"\x89PNG-bytes"
    assert response.headers["content-type"].startswith("image/png")


def test_signed_url_expires(backend: Backend) -> None:
    if not backend.refuses_bad_urls:
        pytest.skip("moto's server does not check presigned URL expiry (nanio does)")
    key = output_key(job_id(), "0.png")
    backend.store.put(key, b"soon gone", "image/png")
    signed = backend.store.signed_url(key, expires_in=2, base_url=backend.base_url)
    assert httpx.get(signed.url, timeout=10).status_code == 200
    time.sleep(max(0.0, signed.expires_at + 1.2 - time.time()))
    response = httpx.get(signed.url, timeout=10)
    assert response.status_code == 403
    assert b"soon gone" not in response.content


def test_tampered_url_is_refused(backend: Backend) -> None:
    if not backend.refuses_bad_urls:
        pytest.skip("moto's server does not verify presigned URL signatures (nanio does)")
    job = job_id()
    secret, public = output_key(job, "0.png"), output_key(job, "1.png")
    backend.store.put(secret, b"secret", "image/png")
    backend.store.put(public, b"public", "image/png")
    signed = backend.store.signed_url(public, expires_in=600, base_url=backend.base_url)
    assert httpx.get(signed.url, timeout=10).status_code == 200
    moved = signed.url.replace("/1.png", "/0.png")  # the signature of one key does not open another
    assert httpx.get(moved, timeout=10).status_code == 403


def test_check_passes_on_a_working_store(backend: Backend) -> None:
    backend.store.check()


# --- when the store is out of reach ------------------------------------------------------------
def test_local_check_fails_when_the_folder_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "objects"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(Unavailable):
        LocalStore(blocker).check()


def test_s3_check_fails_fast_when_the_endpoint_is_unreachable(aws_env: None) -> None:
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", region=REGION, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable"):
        store.check()
    assert time.monotonic() - started < 5  # one attempt, no retry storm behind a readiness probe
    with pytest.raises(Unavailable):
        store.put("outputs/j/0.png", b"x", "image/png")
    with pytest.raises(Unavailable):
        store.get("outputs/j/0.png")


@pytest.mark.parametrize("server_name", ["moto", "nanio"])
def test_s3_check_fails_on_a_missing_bucket(server_name: str, request: pytest.FixtureRequest, aws_env: None) -> None:
    server: S3Server = request.getfixturevalue(f"{server_name}_server")
    with pytest.raises(Unavailable, match="NoSuchBucket"):
        s3_store(server, f"sdserve-missing-{uuid.uuid4().hex[:8]}").check()


def test_s3_credentials_come_from_the_environment(
    nanio_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = nanio_server.new_bucket()
    s3_store(nanio_server, bucket).check()  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from aws_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(Unavailable):
        s3_store(nanio_server, bucket).check()


# --- S3 specifics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("server_name", ["moto", "nanio"])
def test_prefix_keeps_deployments_apart(server_name: str, request: pytest.FixtureRequest, aws_env: None) -> None:
    server: S3Server = request.getfixturevalue(f"{server_name}_server")
    bucket = server.new_bucket()
    one, two = s3_store(server, bucket, prefix="one"), s3_store(server, bucket, prefix="two/nested")
    job = job_id()
    one.put(output_key(job, "0.png"), b"1", "image/png")
    two.put(output_key(job, "0.png"), b"2", "image/png")
    assert (one.get(output_key(job, "0.png")), two.get(output_key(job, "0.png"))) == (b"1", b"2")
    assert one.delete_prefix(outputs_prefix(job)) == 1
    assert two.exists(output_key(job, "0.png"))
    names = [item["Key"] for item in server.admin().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert f"two/nested/outputs/{job}/1/0.png" in names
    assert not any(name.startswith("one/outputs/") for name in names)


def test_presigned_url_carries_the_expiry(moto_server: S3Server, aws_env: None) -> None:
    store = s3_store(moto_server, moto_server.new_bucket(), prefix="p")
    signed = store.signed_url("outputs/j/0.png", expires_in=7 * 24 * 3600, base_url="http://ignored")
    parts = urlsplit(signed.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.netloc == urlsplit(moto_server.endpoint).netloc  # base_url plays no part
    assert parts.path.endswith("/p/outputs/j/0.png")
    assert query["X-Amz-Expires"] == str(MAX_URL_SECONDS)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")) - time.timezone
    assert signed.expires_at <= signed_at + MAX_URL_SECONDS
    for bad in (0, -5, MAX_URL_SECONDS + 1):
        with pytest.raises(InvalidRequest):
            store.signed_url("outputs/j/0.png", expires_in=bad, base_url="")


def test_presigned_urls_name_the_public_endpoint(nanio_server: S3Server, aws_env: None) -> None:
    # The store talks to 127.0.0.1 (inside), clients download from localhost (outside); nanio checks the
    # signature, which covers the host, so the URL only works if it was signed for the public name.
    bucket = nanio_server.new_bucket()
    public = nanio_server.endpoint.replace("127.0.0.1", "localhost")
    store = s3_store(nanio_server, bucket, public_endpoint_url=public)
    store.put("outputs/j/0.png", b"from outside", "image/png")
    signed = store.signed_url("outputs/j/0.png", expires_in=60, base_url="")
    assert signed.url.startswith(f"{public}/{bucket}/outputs/j/0.png?")
    assert httpx.get(signed.url, timeout=10).content == b"from outside"
    inside = s3_store(nanio_server, bucket).signed_url("outputs/j/0.png", expires_in=60, base_url="")
    assert httpx.get(inside.url.replace("127.0.0.1", "localhost"), timeout=10).status_code == 403


def test_retention_installs_lifecycle_rules_and_keeps_others(moto_server: S3Server, aws_env: None) -> None:
    bucket = moto_server.new_bucket()
    admin = moto_server.admin()
    foreign = {"ID": "someone-elses", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    admin.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
    store = s3_store(moto_server, bucket, prefix="prod", retention_days=3)
    assert store.apply_retention() == "lifecycle"
    assert s3_store(moto_server, bucket, prefix="prod", retention_days=5).apply_retention() == "lifecycle"
    rules = {rule["ID"]: rule for rule in admin.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules.pop("someone-elses")["Filter"] == {"Prefix": "logs/"}
    assert {rule["Filter"]["Prefix"] for rule in rules.values()} == {"prod/inputs/", "prod/outputs/"}
    assert {rule["Expiration"]["Days"] for rule in rules.values()} == {5}  # re-applying replaced, not added
    assert all(rule["Status"] == "Enabled" for rule in rules.values())


def test_retention_falls_back_to_purge_without_lifecycle(nanio_server: S3Server, aws_env: None) -> None:
    store = s3_store(nanio_server, nanio_server.new_bucket(), retention_days=3)
    assert store.apply_retention() == "purge"
    assert s3_store(nanio_server, nanio_server.new_bucket()).apply_retention() == "off"


@pytest.mark.parametrize("server_name", ["moto", "nanio"])
def test_purge_deletes_only_expired_inputs_and_outputs(
    server_name: str, request: pytest.FixtureRequest, aws_env: None
) -> None:
    server: S3Server = request.getfixturevalue(f"{server_name}_server")
    bucket = server.new_bucket()
    store = s3_store(server, bucket, prefix="prod", retention_days=3)
    job = job_id()
    for key in (input_key(job, "init.png"), output_key(job, "0.png"), output_key(job, "manifest.json")):
        store.put(key, b"x", "application/octet-stream")
    store.put("notes/keep.txt", b"not ours to expire", "text/plain")
    other_prefix = s3_store(server, bucket, prefix="staging", retention_days=3)
    other_prefix.put(output_key(job, "0.png"), b"other deployment", "image/png")

    assert store.purge_expired(now=time.time()) == 0  # all fresh
    assert store.purge_expired(now=time.time() + 3 * 86400 - 600) == 0  # not yet three days old
    assert store.purge_expired(now=time.time() + 3 * 86400 + 600) == 3
    assert not store.exists(output_key(job, "0.png"))
    assert store.exists("notes/keep.txt")
    assert other_prefix.exists(output_key(job, "0.png"))
    assert s3_store(server, bucket, prefix="prod").purge_expired(now=time.time() + 10**8) == 0  # no retention


# --- open_store ---------------------------------------------------------------------------------
def test_open_store_local(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None)
    store = open_store(settings, signing_key=b"k")
    assert isinstance(store, LocalStore)
    assert store.root == settings.objects_dir
    assert "signature=" in store.signed_url("outputs/j/0.png", expires_in=60, base_url="http://h").url


def test_open_store_s3(moto_server: S3Server, aws_env: None) -> None:
    bucket = moto_server.new_bucket()
    settings = Settings(
        store="s3",
        s3_bucket=bucket,
        s3_prefix="team/sdserve",
        s3_endpoint_url=moto_server.endpoint,
        s3_region=REGION,
        s3_addressing_style="path",
        retention_days=7,
        _env_file=None,
    )
    store = open_store(settings, signing_key=None)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.retention_days) == (bucket, "team/sdserve", 7)
    store.put("outputs/j/0.png", b"x", "image/png")
    names = [item["Key"] for item in moto_server.admin().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "team/sdserve/outputs/j/0.png" in names


def test_open_store_s3_needs_a_bucket() -> None:
    settings = Settings(store="s3", _env_file=None)
    with pytest.raises(ValueError, match="SDSERVE_S3_BUCKET"):
        open_store(settings, signing_key=None)
