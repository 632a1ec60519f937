"""A full object store answers 507 with Retry-After and leaves nothing behind; a job whose results cannot be
stored fails as /problems/storage-failed (not internal) and leaves no partial file. The store is a real
filesystem that is really full: a small tmpfs (root can mount one; elsewhere these tests are skipped)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.main import create_app
from sdserve.settings import Settings
from tests.conftest import LiveServer
from tests.images import encode, pattern

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def full_store(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    objects = settings.objects_dir
    objects.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs as a full store")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(objects)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(objects / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it to the last byte
            while os.write(fd, b"\0" * 1024):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield objects
    finally:
        subprocess.run(["umount", "-l", str(objects)], check=False)


def leftovers(objects: Path) -> list[str]:
    return sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file() and p.name != "filler")


def test_a_full_store_answers_507_and_keeps_nothing(settings: Settings, redis_client: redis.Redis,
                                                    full_store: Path) -> None:  # fmt: skip
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        files = {"file": ("in.png", encode(pattern(128, 128)), "image/png")}
        answer = client.post("/v1/uploads", files=files, data={"kind": "image"})
        assert answer.status_code == 507, answer.text
        assert answer.json()["type"] == "/problems/storage-full" and int(answer.headers["retry-after"]) > 0
        inline = client.post("/v1/img2img", json={**BODY, "image": f"data:image/png;base64,{_b64(files)}"})
        assert inline.status_code == 507 and inline.json()["type"] == "/problems/storage-full"
        assert client.get("/v1/jobs").json()["data"] == []  # no job was made
        ready = client.get("/readyz")
        assert ready.status_code == 507 and ready.json()["type"] == "/problems/storage-full"
    assert leftovers(full_store) == []  # no .tmp file, no partial input


def _b64(files: dict[str, Any]) -> str:
    import base64

    return base64.b64encode(files["file"][1]).decode()


def test_a_job_whose_results_cannot_be_stored_fails_as_a_storage_problem(
    settings: Settings, redis_client: redis.Redis, full_store: Path, run_worker: Any
) -> None:
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as client:
        job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
        run_worker()
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed" and job["error"]["type"] == "/problems/storage-failed", job["error"]
        assert leftovers(full_store) == []  # the run's partial outputs are gone with it
        (full_store / "filler").unlink()  # the operator makes room: the next job succeeds
        again = client.post("/v1/txt2img", json=BODY).json()["id"]
        run_worker()
        assert client.get(f"/v1/jobs/{again}").json()["status"] == "succeeded"
