"""CheckApiKeyPropagation: whether a key's latest change has reached every cluster."""

from typing import Annotated

from keyplane.control import schemas
from keyplane.control.routing import ApiKeyId, AppContext, AppSettings, Rpcs, rpc
from keyplane.propagation import feed
from keyplane.services.auth import Principal

rpcs = Rpcs("api-keys")


@rpcs.route(
    "GET",
    "/auth/api-keys/{apiKeyId}/propagation",
    "CheckApiKeyPropagation",
    schemas.PropagationResponse,
    exclude_none=False,
)
def check_propagation(
    api_key_id: ApiKeyId,
    principal: Annotated[Principal, rpc("CheckApiKeyPropagation")],
    ctx: AppContext,
    settings: AppSettings,
) -> schemas.PropagationResponse:
    status = feed.propagation_status(ctx, settings, principal=principal, api_key_id=api_key_id)
    return schemas.PropagationResponse(ic_propagation=status)
