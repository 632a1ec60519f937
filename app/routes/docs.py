"""``/docs`` (Swagger UI) and ``/redoc`` with their assets served by the gateway itself: usable offline.

FastAPI's own pages load their scripts from a CDN, so on a machine without internet they stay blank. The
assets come from the ``fastapi-offline`` distribution (a dependency of the gateway extra), served here by
name from its static folder, never by a joined path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from sdserve.contract.problems import NotFound

ASSETS = FsPath(str(resources.files("fastapi_offline") / "static"))
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="sdserve API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon.png",
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="sdserve API",
        redoc_js_url="/docs/assets/redoc.standalone.js",
        redoc_favicon_url="/docs/assets/favicon.png",
        with_google_fonts=False,
    )


@router.get("/docs/assets/{name}")
async def asset(name: Annotated[str, Path(max_length=64)]) -> FileResponse:
    for path in ASSETS.iterdir():
        if path.name == name and path.suffix in MEDIA_TYPES and path.is_file():
            return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "max-age=86400"})
    raise NotFound(f"no docs asset {name!r}")
