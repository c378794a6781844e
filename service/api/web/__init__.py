"""The latent-space explorer page at `/`: static files from the package, using only the public API.

No build step and no CDN: `static/` holds one HTML page, its script and its style sheet, served as they are, so
the page works on a machine without internet. The page is a client of the API like any other (it sends the same
requests a curl user would), so it needs no routes of its own beyond the files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS = "/web"

#: The page loads nothing from elsewhere, and its faces arrive as data: URLs (JSON answers) or blob: URLs (strips).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def add_web_page(app: FastAPI) -> None:
    """`GET /` (the explorer page) and its script and style sheet under `ASSETS`."""
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="web")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
