"""The console room: the web console of the control plane, and the API's ``/docs``.

Owns server-rendered pages (Jinja2 ``templates``, htmx) for teams signed in with a management key
(``team``) and for operators (``operator``), their sealed, revocable sessions and CSRF tokens
(``session``, ``web``), Swagger UI (``docs``), and the browser assets vendored into ``static``
(nothing is fetched from a CDN). It acts only through ``keyplane.services``, as the signed-in key,
with the same ACL checks as the Management API: it holds no powers of its own.

May import: ``keyplane.domain``, ``keyplane.services``, ``keyplane.usage`` (usage and spend),
``keyplane.propagation`` (propagation status), ``keyplane.control.render`` (the API's view of the
catalog), ``keyplane.catalog`` and ``keyplane.settings``. Never storage. The control app mounts
it with ``console.install(app)``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from keyplane.console import docs, operator, session, team, usage, web

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the console under ``/console`` and the API docs under ``/docs``."""
    # usage first: its /console/keys/usage must win over team's /console/keys/{key_id}.
    app.include_router(usage.router)
    app.include_router(team.router)
    app.include_router(operator.router)
    app.include_router(docs.router)
    app.mount(f"{web.PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")

    @app.exception_handler(web.SignInRequired)
    async def _sign_in(request: Request, error: web.SignInRequired) -> Response:
        path = "/sign-in" if error.kind == session.TEAM else "/operator/sign-in"
        target = web.PREFIX + path
        if web.is_htmx(request):
            response: Response = Response(status_code=204, headers={"hx-redirect": target})
        else:
            response = web.redirect(target)
        web.clear_cookie(request, response, error.kind)
        return response

    @app.exception_handler(web.BadForm)
    async def _bad_form(request: Request, error: web.BadForm) -> Response:
        return HTMLResponse(
            web.templates.get_template("message.html").render(
                request=request,
                prefix=web.PREFIX,
                user=None,
                title="Refused",
                message=error.message,
            ),
            status_code=error.status,
            headers=web.HEADERS,
        )
