"""A whole job with SDSERVE_STORE=s3: the gateway and a real worker on nanio, the client downloads from S3.

The gateway is built from settings alone (``create_app``), so this shows it picks the store the settings
name; the worker runs in this thread on the session's warm tiny pipelines, its store from ``open_store``.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from PIL import Image

from sdserve.settings import Settings
from sdserve.storage.base import attempt_prefix
from sdserve.storage.s3 import S3Store
from tests.conftest import LiveServer, run_burst
from tests.store.conftest import REGION, S3Server


def test_txt2img_results_are_presigned_s3_urls(
    nanio_server: S3Server,
    aws_env: None,
    settings: Settings,
    redis_client: redis.Redis,
    pipelines: Any,
) -> None:
    from app.main import create_app

    bucket = nanio_server.new_bucket()
    s3_settings = settings.model_copy(
        update={
            "store": "s3",
            "s3_bucket": bucket,
            "s3_prefix": "flow",
            "s3_endpoint_url": nanio_server.endpoint,
            "s3_region": REGION,
            "s3_addressing_style": "path",
            "worker_models": ["tiny"],  # the job's model: the worker need not warm tiny-sdxl too
        }
    )
    with LiveServer(create_app(s3_settings)) as gateway, httpx.Client(base_url=gateway.url, timeout=30) as client:
        created = client.post("/v1/txt2img", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2})
        assert created.status_code == 202, created.text
        # a real worker built from these settings: its store is the one open_store picks (S3)
        run_burst(s3_settings, redis_client, pipelines, name=f"s3-worker-{uuid.uuid4().hex[:6]}")
        job = client.get(created.headers["location"]).json()
    assert job["status"] == "succeeded", job
    (image,) = job["images"]
    url = urlsplit(image["url"])
    assert f"{url.scheme}://{url.netloc}" == nanio_server.endpoint  # straight from the bucket, not the gateway
    key = f"{attempt_prefix(job['id'], 1)}/0.png"  # the first run's outputs
    assert url.path == f"/{bucket}/flow/{key}"
    png = httpx.get(image["url"], timeout=10)
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    manifest = httpx.get(job["manifest_url"], timeout=10).json()
    assert manifest["job_id"] == job["id"]
    assert manifest["images"][0]["sha256"] == hashlib.sha256(png.content).hexdigest()
    store = S3Store(bucket, prefix="flow", endpoint_url=nanio_server.endpoint, region=REGION, addressing_style="path")
    assert store.exists(key)
