"""What every console page shares: templates, security headers, bounded form reading, CSRF, and
the signed-in identity re-checked against the store on every request."""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keyplane.catalog import Catalog
from keyplane.console import session as sess
from keyplane.domain.errors import (
    InvalidArgument,
    KeyplaneError,
    PermissionDenied,
    Unauthenticated,
)
from keyplane.domain.model import ManagementKey
from keyplane.services.auth import Principal, reauthenticate
from keyplane.services.context import Context
from keyplane.settings import Settings

PREFIX = "/console"
#: A console form is a few fields; anything larger is not one.
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 400

#: Scripts and styles only from this origin: a name like ``<script>`` in the store stays text.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "vary": "HX-Request, Cookie",
}

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("keyplane.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


templates.filters["when"] = _when


class SignInRequired(Exception):
    """No valid session (absent, forged, expired, or its credential revoked)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class BadForm(Exception):
    """A console POST that is not a form we sent: too large, wrong type, or a CSRF mismatch."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def state(request: Request) -> tuple[Settings, Context, Catalog]:
    app_state = request.app.state
    catalog: Catalog | None = getattr(app_state, "console_catalog", None)
    if catalog is None:
        catalog = app_state.console_catalog = Catalog(app_state.settings)
    return app_state.settings, app_state.ctx, catalog


def sealer(request: Request) -> sess.Sealer:
    found: sess.Sealer | None = getattr(request.app.state, "console_sealer", None)
    if found is None:
        ctx: Context = request.app.state.ctx
        found = sess.Sealer(ctx.server_secret, ctx.previous_secrets)
        request.app.state.console_sealer = found
    return found


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true" and "hx-boosted" not in request.headers


def page(request: Request, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
    values.setdefault("user", None)
    body = templates.get_template(template).render(request=request, prefix=PREFIX, **values)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers={"cache-control": "no-store"})


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=PREFIX, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


# -- forms ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Form:
    fields: Mapping[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0].strip() if values else default

    def all(self, name: str) -> list[str]:
        return [v.strip() for v in self.fields.get(name, []) if v.strip()]


async def read_form(request: Request) -> Form:
    """The urlencoded body, bounded in size and field count; the same-origin rule on top."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise BadForm(403, "This form was sent from another site.")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise BadForm(415, "Expected a form.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm(413, "The form is too large.")
    try:
        fields = urllib.parse.parse_qs(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise BadForm(400, "The form could not be read.") from None
    return Form(fields)


def check_csrf(request: Request, form: Form, expected: str) -> None:
    presented = form.get("csrf") or request.headers.get("x-csrf-token")
    if not sess.same_token(expected, presented):
        raise BadForm(403, "The form expired or did not come from this console. Reload the page.")


# -- signing in and out (teams and operators alike) ----------------------------------------------


def signin_page(request: Request, template: str, *, error: str = "", status: int = 200) -> Response:
    """A sign-in form with a fresh double-submit token (there is no session to bind one to)."""
    token = secrets.token_urlsafe(24)
    response = page(request, template, status=status, token=token, error=error)
    set_cookie(request, response, sess.PRE, token, max_age=3600)
    return response


async def read_signin_form(request: Request) -> Form:
    form = await read_form(request)
    check_csrf(request, form, request.cookies.get(sess.PRE) or secrets.token_hex(16))
    return form


def start_session(
    request: Request, kind: str, credential_id: str, team_id: str, target: str
) -> Response:
    _session, cookie = sealer(request).new(kind, credential_id, team_id)
    response = redirect(target)
    set_cookie(request, response, kind, cookie, max_age=sess.SESSION_TTL_S)
    clear_cookie(request, response, sess.PRE)
    return response


async def end_session(request: Request, kind: str, target: str) -> Response:
    form = await read_form(request)
    found = sealer(request).open(kind, request.cookies.get(kind))
    if found is not None:
        check_csrf(request, form, found.csrf)
    response = redirect(target)
    clear_cookie(request, response, kind)
    return response


# -- who is signed in ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TeamUser:
    principal: Principal
    session: sess.Session

    @property
    def key(self) -> ManagementKey:
        return self.principal.key

    @property
    def team_id(self) -> str:
        return self.principal.team_id

    def can(self, rpc: str) -> bool:
        try:
            self.principal.require(rpc)
        except PermissionDenied:
            return False
        return True


#: Keys one poll may ask about (a page holds 50).
MAX_POLLED = 100


def team_user(request: Request) -> TeamUser:
    """The signed-in management key, re-read from the store: revoked means signed out."""
    found = sealer(request).open(sess.TEAM, request.cookies.get(sess.TEAM))
    if found is None:
        raise SignInRequired(sess.TEAM)
    _settings, ctx, _catalog = state(request)
    try:
        principal = reauthenticate(ctx, found.credential_id)
    except Unauthenticated:
        raise SignInRequired(sess.TEAM) from None
    return TeamUser(principal, found)


# -- money -------------------------------------------------------------------------------------

MAX_DOLLARS = Decimal(10) ** 12


def cents(text: str) -> int:
    """A dollar amount typed by a person ("200", "49.50", "$1,000") in cents."""
    try:
        amount = Decimal(text.replace(",", "").removeprefix("$"))
    except InvalidOperation:
        raise InvalidArgument("must be an amount in dollars, like 200 or 49.50") from None
    if not amount.is_finite() or amount < 0 or amount >= MAX_DOLLARS:
        raise InvalidArgument("must be between 0 and 999,999,999,999.99 dollars")
    if amount != amount.quantize(Decimal("0.01")):
        raise InvalidArgument("must be whole cents")
    return int(amount * 100)


def dollars(value: int | None) -> str:
    return "" if value is None else f"{Decimal(value) / 100:.2f}"


# -- errors at their fields ----------------------------------------------------------------------

#: The API's field names (either route's spelling) to the console form's.
FIELD_OF = {
    "name": "name",
    "apiKey.name": "name",
    "acls": "acls",
    "aclStrings": "acls",
    "apiKey.aclStrings": "acls",
    "qps": "qps",
    "apiKey.qps": "qps",
    "qpm": "qpm",
    "apiKey.qpm": "qpm",
    "tpm": "tpm",
    "apiKey.tpm": "tpm",
    "expireTime": "expire",
    "apiKey.expireTime": "expire",
    "oldSecretExpireTime": "grace",
    "apiKey.disabled": "disabled",
    **{
        f"{prefix}budget{part}": "budget"
        for prefix in ("", "apiKey.")
        for part in ("", ".cents", ".period")
    },
}


def field_errors(error: KeyplaneError) -> dict[str, str]:
    """``{form field: message}``; errors that name no form field go under ``""`` (the form)."""
    if isinstance(error, InvalidArgument) and error.field is not None:
        name = FIELD_OF.get(error.field)
        if name is not None:
            message = error.message
            if message.startswith(f"{error.field}: "):
                message = message[len(error.field) + 2 :]
            return {name: message}
    return {"": error.message}


User = Annotated[TeamUser, Depends(team_user)]
