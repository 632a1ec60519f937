"""Image input that cannot hurt the service: every bad image is a clear 4xx, fast, and stores nothing."""

from __future__ import annotations

import io
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sdserve.settings import Settings
from tests.images import b64, data_uri, encode, pattern, rect_mask

PROBLEM = "application/problem+json"


def refused(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert body["errors"][0]["message"]
    return body


def png_bomb(width: int, height: int) -> bytes:
    """A valid, tiny PNG that claims (and would decode to) a huge greyscale image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (width + 1) * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def no_stored_inputs(settings: Settings) -> bool:
    folder = settings.objects_dir / "inputs"
    return not folder.exists() or not any(folder.rglob("*.png"))


@pytest.fixture
def image_uri() -> str:
    return data_uri(encode(pattern(64, 64)))


def test_formats_other_than_png_jpeg_webp_are_refused(client: httpx.Client, settings: Settings) -> None:
    for fmt in ("GIF", "BMP", "TIFF"):
        body = {"prompt": "x", "image": b64(encode(pattern(64, 64), fmt))}
        refused(client.post("/v1/img2img", json=body), 422, "body.image")
    for fmt, mime in (("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("PNG", "image/png")):
        body = {"prompt": "x", "image": data_uri(encode(pattern(64, 64), fmt), mime)}
        assert client.post("/v1/img2img", json=body).status_code == 202, fmt
    assert client.post("/v1/img2img", json={"prompt": "x", "image": b64(encode(pattern(64, 64)))}).status_code == 202


@pytest.mark.parametrize(
    ("image", "reason", "slug"),
    [
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "image/gif", "invalid-image"),
        ("data:text/plain;base64,aGVsbG8=", "text/plain", "invalid-image"),
        ("data:image/png,notbase64", "data URI", "invalid-image"),
        ("!!! not base64 !!!", "base64", "invalid-image"),
        ("aGVsbG8gd29ybGQ=", "PNG, JPEG or WEBP", "invalid-image"),  # valid base64 of garbage
        ("upl_0123456789abcdef0123456789abcdef", "unknown", "unusable-input"),  # an id, not an image
    ],
)
def test_bad_image_fields_name_the_field_and_why(
    client: httpx.Client, settings: Settings, image: str, reason: str, slug: str
) -> None:
    body = refused(client.post("/v1/img2img", json={"prompt": "x", "image": image}), 422, "body.image")
    assert reason in body["errors"][0]["message"]
    assert body["type"] == f"/problems/{slug}"
    assert no_stored_inputs(settings)


def test_truncated_and_corrupt_images(client: httpx.Client, settings: Settings) -> None:
    good = encode(pattern(128, 128))
    for data in (good[: len(good) // 2], good[:40], b"\x89PNG\r\n\x1a\n" + os.urandom(200)):
        body = refused(client.post("/v1/img2img", json={"prompt": "x", "image": b64(data)}), 422, "body.image")
        assert "corrupt" in body["detail"] or "truncated" in body["detail"] or "PNG" in body["detail"]
    jpeg = encode(pattern(128, 128), "JPEG")
    refused(client.post("/v1/img2img", json={"prompt": "x", "image": b64(jpeg[: len(jpeg) - 400])}), 422, "body.image")
    assert no_stored_inputs(settings)


def test_pixel_cap_and_decompression_bombs_are_refused_before_decoding(client: httpx.Client) -> None:
    over = encode(Image.new("RGB", (2100, 2100), "red"))  # 4.41 Mpx: over the 4,194,304-pixel cap
    refused(client.post("/v1/img2img", json={"prompt": "x", "image": b64(over)}), 422, "body.image")
    bomb = png_bomb(40000, 40000)  # 1.6 Gpx of zeros in ~1.6 MB
    assert len(bomb) < 3_000_000
    started = time.monotonic()
    body = refused(client.post("/v1/img2img", json={"prompt": "x", "image": b64(bomb)}), 422, "body.image")
    assert time.monotonic() - started < 2.0
    assert "pixels" in body["detail"]
    tiny = encode(Image.new("RGB", (4, 4)))
    refused(client.post("/v1/img2img", json={"prompt": "x", "image": b64(tiny)}), 422, "body.image")


def test_mask_problems(client: httpx.Client, image_uri: str, settings: Settings) -> None:
    wrong_size = data_uri(encode(rect_mask(32, 64, (0, 0, 10, 10))))
    body = refused(
        client.post("/v1/inpaint", json={"prompt": "x", "image": image_uri, "mask": wrong_size}), 422, "body.mask"
    )
    assert "32x64" in body["detail"] and "64x64" in body["detail"]
    black = data_uri(encode(Image.new("L", (64, 64), 0)))
    refused(client.post("/v1/inpaint", json={"prompt": "x", "image": image_uri, "mask": black}), 422, "body.mask")
    almost = data_uri(encode(Image.new("L", (64, 64), 127)))  # below the 128 threshold: still nothing
    refused(client.post("/v1/inpaint", json={"prompt": "x", "image": image_uri, "mask": almost}), 422, "body.mask")
    refused(client.post("/v1/inpaint", json={"prompt": "x", "image": image_uri}), 422, "body")
    opaque = {"prompt": "x", "image": image_uri, "mask_source": "alpha"}
    refused(client.post("/v1/inpaint", json=opaque), 422, "body.image")
    assert no_stored_inputs(settings)


def test_size_rules_of_each_task(client: httpx.Client, image_uri: str) -> None:
    refused(
        client.post("/v1/inpaint", json={"prompt": "x", "image": image_uri, "mask": image_uri, "width": 128}),
        422,
        "body.width",
    )
    refused(client.post("/v1/outpaint", json={"prompt": "x", "image": image_uri}), 422, "body")
    refused(client.post("/v1/outpaint", json={"prompt": "x", "image": image_uri, "left": 1025}), 422, "body.left")
    big = data_uri(encode(pattern(2048, 1536)))
    refused(client.post("/v1/outpaint", json={"prompt": "x", "image": big, "bottom": 1024}), 422, "body.left")
    refused(
        client.post("/v1/img2img", json={"prompt": "x", "image": image_uri, "steps": 10, "strength": 0.05}),
        422,
        "body.strength",
    )
    refused(client.post("/v1/img2img", json={"prompt": "x", "image": image_uri, "strength": 0}), 422, "body.strength")


def test_exif_orientation_is_applied_before_masks_align(client: httpx.Client, run_worker: Any) -> None:
    landscape = pattern(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: shown as 64 wide, 96 high
    jpeg = encode(landscape, "JPEG", exif=exif.tobytes(), quality=95)
    upload = client.post("/v1/uploads", files={"file": ("photo.jpg", jpeg, "image/jpeg")}).json()
    assert (upload["width"], upload["height"], upload["format"]) == (64, 96, "JPEG")
    mask = data_uri(encode(rect_mask(64, 96, (0, 0, 32, 48))))
    response = client.post("/v1/inpaint", json={"prompt": "x", "image": upload["id"], "mask": mask, "steps": 2})
    assert response.status_code == 202, response.text
    wrong = data_uri(encode(rect_mask(96, 64, (0, 0, 32, 32))))
    refused(client.post("/v1/inpaint", json={"prompt": "x", "image": upload["id"], "mask": wrong}), 422, "body.mask")
    run_worker()
    job = client.get(f"/v1/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded"
    assert Image.open(io.BytesIO(httpx.get(job["images"][0]["url"]).content)).size == (64, 96)


def test_uploads_store_once_and_are_used_by_id(client: httpx.Client, settings: Settings, run_worker: Any) -> None:
    data = encode(pattern(80, 48))
    created = client.post("/v1/uploads", files={"file": ("a.png", data, "image/png")}, data={"kind": "image"})
    assert created.status_code == 201, created.text
    upload = created.json()
    import hashlib

    assert upload["sha256"] == hashlib.sha256(data).hexdigest()
    assert (upload["width"], upload["height"], upload["kind"]) == (80, 48, "image")
    assert created.headers["location"].endswith(f"/v1/uploads/{upload['id']}")
    assert client.get(f"/v1/uploads/{upload['id']}").json()["id"] == upload["id"]
    refused(client.get("/v1/uploads/upl_0123456789abcdef0123456789abcdef"), 404)
    ids = [
        client.post("/v1/img2img", json={"prompt": "x", "image": upload["id"], "steps": 2}).json()["id"]
        for _ in range(3)
    ]
    stored = list(Path(settings.objects_dir).rglob("*.png"))
    assert len(stored) == 1  # one object, three jobs
    run_worker()
    for job_id in ids:
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_bad_uploads(client: httpx.Client) -> None:
    gif = encode(pattern(16, 16), "GIF")
    refused(client.post("/v1/uploads", files={"file": ("a.gif", gif, "image/gif")}), 422, "body.file")
    refused(client.post("/v1/uploads", files={"file": ("a.png", b"", "image/png")}), 422, "body.file")
    refused(
        client.post(
            "/v1/uploads", files={"file": ("a.png", encode(pattern(16, 16)), "image/png")}, data={"kind": "video"}
        ),
        422,
    )
    refused(client.post("/v1/uploads", data={"kind": "image"}), 422)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _raw_post(base: str, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(head.encode() + b"\r\n")
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: that is the point
        answer = b""
        while b"\r\n\r\n" not in answer:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, answer


def test_over_large_bodies_are_refused_with_or_without_content_length(gateway: str, settings: Settings) -> None:
    limit = settings.max_body_bytes
    block = b"A" * (1024 * 1024)
    before = _rss_kib()

    def chunked(total_mib: int) -> Iterator[bytes]:
        head = b'{"prompt":"x","image":"'
        yield f"{len(head):x}\r\n".encode() + head + b"\r\n"
        for _ in range(total_mib):
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
        yield b"0\r\n\r\n"

    # Without Content-Length (chunked): the gateway stops at the limit.
    status, answer = _raw_post(
        gateway,
        "/v1/img2img",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        chunked(3 * limit // len(block)),
    )
    assert status == 413, answer[:300]
    # With a Content-Length over the limit: refused before the body is read.
    started = time.monotonic()
    status, answer = _raw_post(
        gateway,
        "/v1/img2img",
        {"Content-Type": "application/json", "Content-Length": str(3 * limit)},
        iter([b"{"]),
    )
    assert status == 413 and time.monotonic() - started < 2
    assert b"application/problem+json" in answer
    growth_kib = _rss_kib() - before
    assert growth_kib * 1024 < limit * 1.5, f"the process grew by {growth_kib} KiB"
    with httpx.Client(base_url=gateway) as c:
        refused(c.post("/v1/uploads", files={"file": ("a.png", b"\0" * (21 * 1024 * 1024), "image/png")}), 413)
