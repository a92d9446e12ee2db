"""``keyplane models``, ``keyplane endpoints`` and ``keyplane audit``: what a team may name in
its keys' ACLs, and what happened to its keys."""

from __future__ import annotations

import itertools

import click

from keyplane.cli._api import api_command, json_option, print_json, table, when
from keyplane.client import Client


@click.command()
@json_option
@api_command
def models(client: Client, as_json: bool) -> None:
    """The models of each cluster, with their team × model limits (0 = none)."""
    clusters = client.list_models()
    if as_json:
        print_json(clusters)
        return
    rows = []
    for cluster in clusters:
        for kind, group in (
            ("language", cluster.language_models),
            ("image", cluster.image_generation_models),
            ("embedding", cluster.embedding_models),
        ):
            rows += [
                {
                    "cluster": cluster.cluster_name,
                    "model": m.name,
                    "kind": kind,
                    "aliases": m.aliases,
                    "rps": m.rps,
                    "rpm": m.rpm,
                    "tpm": m.tpm,
                }
                for m in group
            ]
    table(rows)


@click.command()
@json_option
@api_command
def endpoints(client: Client, as_json: bool) -> None:
    """Every endpoint ACL a key can hold."""
    acls = client.list_endpoint_acls()
    if as_json:
        print_json(acls)
    else:
        table([{"acl": a.acl, "description": a.description} for a in acls])


@click.command()
@click.option("--since", metavar="TIME", help="Events at or after this RFC 3339 time.")
@click.option("--until", metavar="TIME", help="Events before this RFC 3339 time.")
@click.option("--query", help="Text the event's description contains.")
@click.option("--user", "user_id", help="Events of this user id.")
@click.option("--newest-first", is_flag=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many events.")
@json_option
@api_command
def audit(
    client: Client,
    since: str | None,
    until: str | None,
    query: str | None,
    user_id: str | None,
    newest_first: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """The team's audit events (every mutation), oldest first, all pages."""
    events = client.list_audit_events(
        page_size=min(limit or 100, 100),
        time_from=None if since is None else when(since, "--since"),
        time_to=None if until is None else when(until, "--until"),
        query=query,
        user_id=user_id,
        descending=newest_first,
    )
    chosen = list(itertools.islice(events, limit))
    if as_json:
        print_json(chosen)
        return
    table(
        [
            {
                "time": e.event_time,
                "operation": e.operation,
                "entity": e.entity_id,
                "user": e.user,
                "description": e.description,
            }
            for e in chosen
        ]
    )
