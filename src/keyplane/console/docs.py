"""``/docs``: Swagger UI for the Management API, from the vendored ``swagger-ui-dist`` assets."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from keyplane.console import web

router = APIRouter(include_in_schema=False)

#: Swagger UI sets inline styles from its scripts and shows inline SVG; still no foreign origin.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


@router.get("/docs", response_class=HTMLResponse)
def swagger(request: Request) -> Response:
    body = web.templates.get_template("docs.html").render(prefix=web.PREFIX)
    headers = {**web.HEADERS, "content-security-policy": DOCS_CSP, "cache-control": "no-cache"}
    return HTMLResponse(body, headers=headers)
