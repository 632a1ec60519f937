"""The playground: one page at ``/`` (plain HTML + JS, no build step) and its assets at ``/static/{name}``.

The page is a client of the public API like any other (same endpoints, API key as a bearer token);
this module only serves files. Assets are looked up by name among the files of ``app/static/``: a
name is never joined onto a path, so nothing outside that folder can be reached.
"""

from __future__ import annotations

import re
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from sdserve.contract.problems import NotFound

STATIC_DIR = FsPath(__file__).resolve().parent.parent / "static"
INDEX = "index.html"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# The page runs only its own script and style; images may come from the object store (another origin with
# S3) and previews are data URIs; "use as input" downloads a result, which may also live on the store.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self' http: https:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def asset(name: str) -> FsPath:
    """The file of ``app/static/`` with this exact name, found by listing the folder (never by joining)."""
    if _NAME.fullmatch(name):
        for path in STATIC_DIR.iterdir():
            if path.name == name and path.suffix in MEDIA_TYPES and path.is_file():
                return path
    raise NotFound(f"no asset {name!r}")


def _serve(path: FsPath) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    """The playground page."""
    return _serve(asset(INDEX))


@router.get("/static/{name}", include_in_schema=False)
async def static_asset(name: Annotated[str, Path(max_length=100)]) -> FileResponse:
    """One of the page's assets (a file of ``app/static/``)."""
    return _serve(asset(name))
