"""The dashboard's page and static files (plain ES modules and CSS shipped in the package: no CDN, no build)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parents[2] / "web"
router = APIRouter(include_in_schema=False)
# The page talks only to this market; scripts and styles only from here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=307)


@router.get("/dashboard")
@router.get("/dashboard/")
def page() -> FileResponse:
    return FileResponse(
        WEB / "index.html",
        media_type="text/html",
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=WEB / "static"), name="dashboard-static")
