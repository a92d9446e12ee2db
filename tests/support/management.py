"""The one Management API test client: a team's management key, speaking the contract's JSON.

Each helper sends one RPC and asserts the 200 it expects, returning the decoded body; tests that
look at a refusal send the request themselves through ``http`` (a plain ``httpx2.Client``), which
is the same connection with the same ``Authorization`` header.

The same client serves every suite: over loopback to a control-plane process (``connect``) and
in-process through an ASGI transport (``tests.support.inprocess``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

_TLS = ssl.create_default_context()


def connect(base_url: str, secret: str | None = None) -> httpx2.Client:
    """An HTTP client for a control plane, sending ``secret`` as the bearer token if given.

    All clients share one TLS context: httpx2 builds a new one per client otherwise (about 80 ms
    each, which adds up over hundreds of short tests)."""
    headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
    return httpx2.Client(base_url=base_url, headers=headers, timeout=10.0, verify=_TLS)


@dataclass
class ManagementClient:
    """A team's management key and an HTTP client that sends it."""

    team_id: str
    secret: str
    http: httpx2.Client
    #: Fields every ``create_key`` sends unless the call overrides them.
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"name": "k"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def keys_path(self) -> str:
        return f"/auth/teams/{self.team_id}/api-keys"

    @staticmethod
    def ok(response: httpx2.Response) -> Any:
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()

    def create_key(self, acls: Sequence[str] | None = None, **fields: Any) -> dict[str, Any]:
        body = {**self.defaults, **fields}
        if acls is not None:
            body["acls"] = list(acls)
        created: dict[str, Any] = self.ok(self.http.post(self.keys_path, json=body))
        return created

    def list_keys(self, **params: Any) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = self.ok(self.http.get(self.keys_path, params=params))[
            "apiKeys"
        ]
        return keys

    def get_key(self, key_id: str) -> dict[str, Any]:
        (key,) = [k for k in self.list_keys() if k["apiKeyId"] == key_id]
        return key

    def update(self, key_id: str, api_key: dict[str, Any], mask: Any) -> httpx2.Response:
        """UpdateApiKey, answer unchecked: the caller asserts what it expects."""
        return self.http.put(
            f"/auth/api-keys/{key_id}", json={"apiKey": api_key, "fieldMask": mask}
        )

    def update_key(self, key_id: str, mask: str, **fields: Any) -> dict[str, Any]:
        updated: dict[str, Any] = self.ok(self.update(key_id, fields, mask))
        return updated

    def rotate_key(self, key_id: str, **body: Any) -> dict[str, Any]:
        rotated: dict[str, Any] = self.ok(
            self.http.post(f"/auth/api-keys/{key_id}/rotate", json=body)
        )
        assert rotated["apiKeyId"] == key_id
        return rotated

    def delete_key(self, key_id: str) -> None:
        self.ok(self.http.delete(f"/auth/api-keys/{key_id}"))

    def propagation(self, key_id: str) -> dict[str, bool]:
        status: dict[str, bool] = self.ok(self.http.get(f"/auth/api-keys/{key_id}/propagation"))[
            "icPropagation"
        ]
        return status

    def events(self, **params: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.ok(
            self.http.get(f"/audit/teams/{self.team_id}/events", params=params)
        )["events"]
        return events
