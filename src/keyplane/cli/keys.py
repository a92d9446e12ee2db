"""``keyplane keys``: a team's inference API keys over the Management API, with its management
key (``KEYPLANE_MANAGEMENT_KEY``, or a prompt)."""

from __future__ import annotations

from typing import Any

import click

from keyplane.cli._api import api_command, json_option, print_json, table, when
from keyplane.client import ApiKey, ApiKeyUpdate, Budget, Client

secret_only_option = click.option(
    "--secret-only",
    is_flag=True,
    help="Print only the new secret, for KEY=$(keyplane keys ...).",
)

budget_period_option = click.option(
    "--budget-period",
    type=click.Choice(["DAY", "WEEK", "MONTH"], case_sensitive=False),
    default="MONTH",
    show_default=True,
    callback=lambda _ctx, _param, value: value.upper(),
    help="The UTC period a budget counts over.",
)


def _row(key: ApiKey) -> dict[str, Any]:
    return {
        "api_key_id": key.api_key_id,
        "name": key.name,
        "key": key.redacted_api_key,
        "acls": key.acl_strings,
        "qps": key.qps,
        "qpm": key.qpm,
        "tpm": key.tpm,
        "disabled": key.disabled,
        "expires": key.expire_time,
        "budget": None if key.budget is None else f"{key.budget.cents}c/{key.budget.period}",
        "created": key.create_time,
    }


def _show(key: ApiKey, as_json: bool, secret_only: bool = False) -> None:
    if secret_only:
        click.echo(key.api_key or "")
        return
    if as_json:
        print_json(key)
        return
    table([_row(key)])
    if key.api_key:
        click.echo("secret (shown once, keep it safe):")
        click.echo(f"  {key.api_key}")


def _limit(text: str | None, option: str) -> int | None:
    """A limit option: a non-negative integer, or ``none`` to clear it."""
    if text is None or text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an integer or 'none'", param_hint=option
        ) from None
    if value < 0:
        raise click.BadParameter("must not be negative", param_hint=option)
    return value


@click.group()
def keys() -> None:
    """A team's API keys: create, list, get, update, rotate, delete, propagation, wait."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--acl",
    "acls",
    multiple=True,
    help="api-key:endpoint:<name> or api-key:model:<name> (repeatable).",
)
@click.option("--qps", type=click.IntRange(min=0), help="Requests per second.")
@click.option("--qpm", type=click.IntRange(min=0), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=0), help="Tokens per minute.")
@click.option("--expire-time", metavar="TIME", help="RFC 3339 expiry (default: never).")
@click.option(
    "--budget-cents", type=click.IntRange(min=0), help="keyplane-only: spend cap (USD cents)."
)
@budget_period_option
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Wait until every cluster enforces the key.",
)
@secret_only_option
@json_option
@api_command
def create(
    client: Client,
    name: str,
    acls: tuple[str, ...],
    qps: int | None,
    qpm: int | None,
    tpm: int | None,
    expire_time: str | None,
    budget_cents: int | None,
    budget_period: str,
    wait_s: float | None,
    secret_only: bool,
    as_json: bool,
) -> None:
    """Create a key; its secret is printed once."""
    key = client.create_api_key(
        name,
        acls=acls,
        qps=qps,
        qpm=qpm,
        tpm=tpm,
        expire_time=None if expire_time is None else when(expire_time, "--expire-time"),
        budget=None if budget_cents is None else Budget(cents=budget_cents, period=budget_period),
    )
    if wait_s is not None:
        client.wait_propagated(key.api_key_id, timeout=wait_s)
    _show(key, as_json, secret_only)


@keys.command("list")
@click.option(
    "--acl-filter", "acl_filters", multiple=True, help="Only keys holding this ACL (repeatable)."
)
@click.option("--active-only", is_flag=True, help="Leave out expired keys.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@api_command
def list_keys(
    client: Client, acl_filters: tuple[str, ...], active_only: bool, page_size: int, as_json: bool
) -> None:
    """Every key of the team, oldest first (all pages)."""
    found = list(
        client.list_api_keys(page_size=page_size, acl_filters=acl_filters, active_only=active_only)
    )
    if as_json:
        print_json(found)
    else:
        table([_row(k) for k in found])


@keys.command("get")
@click.argument("api_key_id")
@json_option
@api_command
def get(client: Client, api_key_id: str, as_json: bool) -> None:
    """One key, by id."""
    _show(client.get_api_key(api_key_id), as_json)


@keys.command("update")
@click.argument("api_key_id")
@click.option("--name")
@click.option(
    "--acl", "acls", multiple=True, help="The new ACL list (repeatable; replaces the old one)."
)
@click.option("--no-acls", is_flag=True, help="Remove every ACL (the key can then do nothing).")
@click.option("--qps", metavar="N|none")
@click.option("--qpm", metavar="N|none")
@click.option("--tpm", metavar="N|none")
@click.option("--disable/--enable", "disabled", default=None)
@click.option("--expire-time", metavar="TIME|never")
@click.option("--budget-cents", metavar="N|none", help="keyplane-only: spend cap (USD cents).")
@budget_period_option
@json_option
@api_command
def update(
    client: Client,
    api_key_id: str,
    name: str | None,
    acls: tuple[str, ...],
    no_acls: bool,
    qps: str | None,
    qpm: str | None,
    tpm: str | None,
    disabled: bool | None,
    expire_time: str | None,
    budget_cents: str | None,
    budget_period: str,
    as_json: bool,
) -> None:
    """Change the fields given, and only those (``none`` clears a limit, ``never`` the expiry)."""
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if acls and no_acls:
        raise click.UsageError("--acl and --no-acls contradict each other")
    if acls or no_acls:
        changes["acl_strings"] = list(acls)
    for option, value in (("qps", qps), ("qpm", qpm), ("tpm", tpm)):
        if value is not None:
            changes[option] = _limit(value, f"--{option}")
    if disabled is not None:
        changes["disabled"] = disabled
    if expire_time is not None:
        changes["expire_time"] = (
            None if expire_time.lower() == "never" else when(expire_time, "--expire-time")
        )
    if budget_cents is not None:
        cents = _limit(budget_cents, "--budget-cents")
        changes["budget"] = None if cents is None else Budget(cents=cents, period=budget_period)
    if not changes:
        raise click.UsageError("nothing to change: give at least one field option")
    _show(client.update_api_key(api_key_id, ApiKeyUpdate(**changes)), as_json)


@keys.command("rotate")
@click.argument("api_key_id")
@click.option(
    "--expire-time", metavar="TIME", help="Expiry of the new secret (default: the key's)."
)
@click.option(
    "--old-secret-expire-time",
    metavar="TIME",
    help="When the old secret stops working (default: in 24 h).",
)
@secret_only_option
@json_option
@api_command
def rotate(
    client: Client,
    api_key_id: str,
    expire_time: str | None,
    old_secret_expire_time: str | None,
    secret_only: bool,
    as_json: bool,
) -> None:
    """A new secret for the key, printed once; the old one works for a while."""
    key = client.rotate_api_key(
        api_key_id,
        expire_time=None if expire_time is None else when(expire_time, "--expire-time"),
        old_secret_expire_time=None
        if old_secret_expire_time is None
        else when(old_secret_expire_time, "--old-secret-expire-time"),
    )
    _show(key, as_json, secret_only)


@keys.command("delete")
@click.argument("api_key_id")
@json_option
@api_command
def delete(client: Client, api_key_id: str, as_json: bool) -> None:
    """Delete the key, for good."""
    client.delete_api_key(api_key_id)
    if as_json:
        print_json({})
    else:
        click.echo(f"deleted {api_key_id}")


@keys.command("propagation")
@click.argument("api_key_id")
@json_option
@api_command
def propagation(client: Client, api_key_id: str, as_json: bool) -> None:
    """Per cluster, whether the key's last change has arrived."""
    status = client.get_propagation(api_key_id)
    if as_json:
        print_json(status)
        return
    table(
        [
            {"cluster": host, "arrived": arrived}
            for host, arrived in sorted(status.ic_propagation.items())
        ]
    )


@keys.command("wait")
@click.argument("api_key_id")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@json_option
@api_command
def wait(client: Client, api_key_id: str, timeout: float, as_json: bool) -> None:
    """Wait until every cluster enforces the key's last change (exit 1 on timeout)."""
    status = client.wait_propagated(api_key_id, timeout=timeout)
    if as_json:
        print_json(status)
    else:
        click.echo(f"propagated to {', '.join(sorted(status.ic_propagation))}")
