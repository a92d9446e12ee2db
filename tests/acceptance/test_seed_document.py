"""Every request of the user's own document, ``using-management-api.txt``, as written there.

The requests are not retyped here: they are parsed out of a verbatim copy of the document that sits
next to this file, and sent with curl (the tool the document uses), so the bytes on the wire are
the document's: ``-X``, the ``-d`` bodies as they stand (curl sends them as
``application/x-www-form-urlencoded``, and the second update body ends in a trailing comma), the
headers. Only what the document leaves to the reader is filled in: the base URL, ``{teamId}``,
``{apiKeyId}``, the management key, and the ``"<The apiKey Object with updated ...>"`` placeholders.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.management import ManagementClient, connect
from tests.support.procs import Deployment, wait_for

DOCUMENT = (Path(__file__).parent / "using-management-api.txt").read_text()
DOC_BASE = "https://management-api.x.ai"
SECRET = re.compile(r"xai-[A-Za-z0-9]{80}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


# -- the document's curl commands -----------------------------------------------------------------


@dataclass
class Curl:
    """One ``curl`` command of the document: what it asks for, before placeholders are filled."""

    url: str
    x: str | None = None  # the -X option, if the command has one
    headers: list[str] = field(default_factory=list)
    data: str | None = None

    @property
    def method(self) -> str:
        return self.x or ("POST" if self.data is not None else "GET")  # as curl decides

    @property
    def path(self) -> str:
        return self.url.removeprefix(DOC_BASE).split("?")[0]


_CONTINUED = " \\\\\n"  # the document's line continuation: a space, two backslashes, a newline
_OPTION = re.compile(r"""-X (?P<method>[A-Z]+)|-H "(?P<header>[^"]*)"|-d '(?P<data>[^']*)'""")


def parse_document(text: str) -> list[Curl]:
    """The curl commands of the document, in order. Prose follows a command's last option on the
    same line (the document lost its line breaks there), so a command ends at the first option
    that is not followed by a line continuation."""
    commands = []
    for start in re.finditer(r"curl (?P<url>\S+)" + re.escape(_CONTINUED), text):
        curl = Curl(url=start["url"])
        pos = start.end()
        while True:
            option = _OPTION.match(text, pos)
            assert option is not None, f"cannot read the option at {text[pos : pos + 40]!r}"
            if option["method"]:
                curl.x = option["method"]
            elif option["header"] is not None:
                curl.headers.append(option["header"])
            else:
                curl.data = option["data"]
            pos = option.end()
            if not text.startswith(_CONTINUED, pos):
                break
            pos += len(_CONTINUED)
        commands.append(curl)
    return commands


REQUESTS = parse_document(DOCUMENT)
CREATE, LIST, UPDATE_QPM, UPDATE_NAME, DELETE, PROPAGATION, MODELS, ENDPOINTS = REQUESTS


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def run_curl(
    curl: Curl, base: str, *, values: dict[str, str], add_headers: tuple[str, ...] = ()
) -> Answer:
    """Send ``curl`` with its placeholders filled from ``values`` (each placeholder text, as the
    document writes it, to what replaces it)."""

    def fill(text: str) -> str:
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        return text

    url = fill(curl.url).replace(DOC_BASE, base)
    headers = [fill(h) for h in (*curl.headers, *add_headers)]
    data = None if curl.data is None else fill(curl.data)
    if shutil.which("curl") is None:  # pragma: no cover - the same bytes, when curl is absent
        sent = {"User-Agent": "curl/8", "Accept": "*/*"}
        if data is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        sent.update(tuple(h.split(": ", 1)) for h in headers)  # type: ignore[misc]
        r = httpx2.request(curl.method, url, headers=sent, content=data, timeout=10)
        return Answer(r.status_code, r.content)
    # The URL is one argument: in a shell the list URL's unquoted "&" would end the command,
    # which the document plainly does not mean.
    args = ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", url]
    if curl.x is not None:
        args += ["-X", curl.x]
    for header in headers:
        args += ["-H", header]
    if data is not None:
        args += ["-d", data]
    done = subprocess.run(args, capture_output=True, check=True, timeout=20)
    body, _, status = done.stdout.rpartition(b"\n")
    return Answer(int(status), body)


# -- fixtures -------------------------------------------------------------------------------------


@dataclass
class Team:
    base: str
    team_id: str
    secret: str

    @property
    def values(self) -> dict[str, str]:
        return {"{teamId}": self.team_id, "<Your Management API Key>": self.secret}

    @property
    def auth(self) -> str:
        return f"Authorization: Bearer {self.secret}"

    def client(self) -> ManagementClient:
        return ManagementClient(self.team_id, self.secret, connect(self.base, self.secret))

    def create(self, **values: str) -> dict[str, Any]:
        answer = run_curl(CREATE, self.base, values={**self.values, **values})
        assert answer.status == 200, answer.body
        created: dict[str, Any] = answer.json()
        return created


@pytest.fixture
def team(module_deployment: Deployment) -> Team:
    team_id, secret = module_deployment.create_team(f"seed-{uuid.uuid4()}")
    return Team(module_deployment.control_url, team_id, secret)


def listed(team: Team) -> dict[str, dict[str, Any]]:
    with team.client() as c:
        return {k["apiKeyId"]: k for k in c.list_keys()}


# -- the document, request by request -----------------------------------------------------------


def test_the_document_holds_these_eight_requests() -> None:
    assert [(c.method, c.path) for c in REQUESTS] == [
        ("POST", "/auth/teams/{teamId}/api-keys"),
        ("GET", "/auth/teams/{teamId}/api-keys"),
        ("PUT", "/auth/teams/{teamId}/api-keys"),
        ("PUT", "/auth/teams/{teamId}/api-keys"),
        ("DELETE", "/auth/api-keys/{apiKeyId}"),
        ("GET", "/auth/api-keys/{apiKeyId}/propagation"),
        ("GET", "/auth/teams/{teamId}/models"),
        ("GET", "/auth/teams/{teamId}/endpoints"),
    ]
    assert LIST.url.endswith("?pageSize=10&paginationToken=")
    # The update examples carry no Authorization header; every other request does.
    assert UPDATE_QPM.headers == UPDATE_NAME.headers == []
    assert all(
        c.headers == ["Authorization: Bearer <Your Management API Key>"]
        for c in (CREATE, LIST, DELETE, PROPAGATION, MODELS, ENDPOINTS)
    )
    assert UPDATE_NAME.data is not None
    assert UPDATE_NAME.data.rstrip().endswith('"fieldMask": "name",\n}')


def test_create_api_key(team: Team) -> None:
    created = team.create()

    assert SECRET.fullmatch(created["apiKey"]), "the secret: xai- and 80 letters and digits"
    assert str(uuid.UUID(created["apiKeyId"])) == created["apiKeyId"]
    assert created["teamId"] == team.team_id
    assert created["name"] == "My API key"
    assert created["aclStrings"] == ["api-key:model:*", "api-key:endpoint:*"]
    assert created["qps"] == 5
    assert created["qpm"] == 100
    assert "tpm" not in created, '"tpm": null means no token limit, and unset fields are omitted'
    assert created["disabled"] is False
    assert created["redactedApiKey"] == "xai-..." + created["apiKey"][-4:]
    assert TIMESTAMP.fullmatch(created["createTime"])
    assert TIMESTAMP.fullmatch(created["modifyTime"])


def test_tpm_as_an_integer_string_round_trips(team: Team) -> None:
    """The document: "Specify tpm to any integer string". Its create body, with "1000" for null."""
    assert CREATE.data is not None
    assert '"tpm": null' in CREATE.data
    limited = Curl(CREATE.url, CREATE.x, CREATE.headers, CREATE.data.replace("null", '"1000"'))

    answer = run_curl(limited, team.base, values=team.values)

    assert answer.status == 200, answer.body
    assert answer.json()["tpm"] == "1000"
    assert listed(team)[answer.json()["apiKeyId"]]["tpm"] == "1000"


def test_list_api_keys(team: Team) -> None:
    created = team.create()

    answer = run_curl(LIST, team.base, values=team.values)

    assert answer.status == 200, answer.body
    page = answer.json()
    assert [k["apiKeyId"] for k in page["apiKeys"]] == [created["apiKeyId"]]
    assert "paginationToken" not in page, "one key fits on a page of ten: no next page"
    shown = page["apiKeys"][0]
    assert "apiKey" not in shown, "the secret is shown once, at creation"
    expected = {k: v for k, v in created.items() if k != "apiKey"}
    assert shown == expected


def _update(team: Team, curl: Curl, placeholder: str, key: dict[str, Any]) -> Answer:
    values = {**team.values, f'"{placeholder}"': json.dumps(key)}
    # As written, without credentials, the request is refused...
    refused = run_curl(curl, team.base, values=values)
    assert refused.status == 401, refused.body
    assert refused.json()["code"] == "unauthenticated:no-credentials"
    # ...so it is sent with the Authorization header every other example of the document carries.
    return run_curl(curl, team.base, values=values, add_headers=(team.auth,))


def test_update_qpm(team: Team) -> None:
    created = team.create()
    # "The apiKey Object with updated qpm": the object the create answered (secret and all; this
    # path takes the key's id from it), with qpm changed.
    key = {**created, "qpm": 250}

    answer = _update(team, UPDATE_QPM, "<The apiKey Object with updated qpm>", key)

    assert answer.status == 200, answer.body
    updated = answer.json()
    assert updated["apiKeyId"] == created["apiKeyId"]
    assert updated["qpm"] == 250
    assert "apiKey" not in updated
    unchanged = ("name", "qps", "aclStrings", "createTime", "redactedApiKey", "disabled")
    assert {f: updated[f] for f in unchanged} == {f: created[f] for f in unchanged}
    assert listed(team)[created["apiKeyId"]]["qpm"] == 250


def test_update_name(team: Team) -> None:
    created = team.create()
    # Other fields changed in the object too: only the masked one may take effect.
    key = {**created, "name": "Renamed key", "qpm": 1, "qps": 1}

    answer = _update(team, UPDATE_NAME, "<The apiKey Object with updated name>", key)

    assert answer.status == 200, answer.body
    updated = answer.json()
    assert updated["name"] == "Renamed key"
    assert (updated["qps"], updated["qpm"]) == (5, 100)
    assert listed(team)[created["apiKeyId"]]["name"] == "Renamed key"


def test_delete_api_key(team: Team) -> None:
    created = team.create()
    kept = team.create()
    values = {**team.values, "{apiKeyId}": created["apiKeyId"]}

    answer = run_curl(DELETE, team.base, values=values)

    assert answer.status == 200, answer.body
    assert answer.json() == {}
    assert set(listed(team)) == {kept["apiKeyId"]}
    again = run_curl(DELETE, team.base, values=values)
    assert again.status == 404
    assert again.json()["code"] == "not-found"


def test_list_models(team: Team, module_deployment: Deployment) -> None:
    answer = run_curl(MODELS, team.base, values=team.values)

    assert answer.status == 200, answer.body
    configs = answer.json()["clusterConfigs"]
    assert [c["clusterName"] for c in configs] == module_deployment.clusters
    names = set()
    for config in configs:
        for kind in ("languageModels", "imageGenerationModels", "embeddingModels"):
            for model in config[kind]:
                names.add(model["name"])
                assert {"name", "version", "aliases", "inputModalities", "outputModalities"} <= set(
                    model
                )
                assert all(isinstance(model[f], str) for f in ("rps", "rpm", "tpm"))
    assert {"grok-4", "grok-2-image"} <= names
    # "The model names in the output can be used ... as api-key:model:<model-name>"
    acls = [f"api-key:model:{name}" for name in sorted(names)]
    with team.client() as c:
        assert c.create_key(acls, name="models")["aclStrings"] == acls


def test_list_endpoint_acls(team: Team) -> None:
    answer = run_curl(ENDPOINTS, team.base, values=team.values)

    assert answer.status == 200, answer.body
    entries = answer.json()["acls"]
    acls = [e["acl"] for e in entries]
    assert {"api-key:endpoint:chat", "api-key:endpoint:image"} <= set(acls)
    for entry in entries:
        assert entry["acl"] == f"{entry['namespace']}:{entry['key']}:{entry['value']}"
        assert (entry["namespace"], entry["key"]) == ("api-key", "endpoint")
        assert entry["description"]
    # "You can then apply the endpoint ACL strings to your API keys."
    with team.client() as c:
        assert c.create_key(acls, name="eps")["aclStrings"] == acls


@pytest.fixture
def with_gateways(deployment: Deployment) -> Team:
    deployment.start_control()
    gateways = [deployment.start_gateway(cluster) for cluster in deployment.clusters]

    def synced() -> bool:
        # Each gateway has its first snapshot (instant here; minutes for the million group).
        return all(httpx2.get(g.url + "/healthz").json()["synced"] for g in gateways)

    wait_for(synced, timeout=900, what="every gateway's first snapshot")
    team_id, secret = deployment.create_team("propagation")
    return Team(deployment.control_url, team_id, secret)


@pytest.mark.timeout(1200)  # the million group's gateways each snapshot a million keys first
def test_check_propagation(with_gateways: Team, deployment: Deployment) -> None:
    team = with_gateways
    created = team.create()
    values = {**team.values, "{apiKeyId}": created["apiKeyId"]}
    hosts = {f"{name}.api.test" for name in deployment.clusters}

    def arrived() -> bool:
        answer = run_curl(PROPAGATION, team.base, values=values)
        assert answer.status == 200, answer.body
        status = answer.json()["icPropagation"]
        assert set(status) == hosts
        return all(status.values())

    wait_for(arrived, timeout=10, what="the new key on every cluster")
