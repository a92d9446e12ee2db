"""ListModels and ListPossibleEndpointAcls: what a key's ACLs may name."""

from typing import Annotated

from keyplane.control import render, schemas
from keyplane.control.routing import AppCatalog, Rpcs, TeamId, team_rpc
from keyplane.services.auth import Principal

rpcs = Rpcs("catalog")


@rpcs.route("GET", "/auth/teams/{teamId}/models", "ListModels", schemas.ListModelsResponse)
def list_models(
    team_id: TeamId,
    principal: Annotated[Principal, team_rpc("ListModels")],
    catalog: AppCatalog,
) -> schemas.ListModelsResponse:
    return render.models(catalog)


@rpcs.route(
    "GET",
    "/auth/teams/{teamId}/endpoints",
    "ListPossibleEndpointAcls",
    schemas.ListEndpointAclsResponse,
    exclude_none=False,
)
def list_endpoints(
    team_id: TeamId,
    principal: Annotated[Principal, team_rpc("ListPossibleEndpointAcls")],
) -> schemas.ListEndpointAclsResponse:
    return render.endpoint_acls()
