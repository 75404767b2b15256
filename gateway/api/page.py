"""GET /: the web page (one static file; it only calls the public API)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["page"])

PAGE = Path(__file__).resolve().parents[1] / "static" / "index.html"


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")
