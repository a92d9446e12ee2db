"""ValidateManagementKey: who the presented management key is."""

from typing import Annotated

from fastapi import Depends

from keyplane.control import render, schemas
from keyplane.control.routing import Rpcs, current_principal
from keyplane.services.auth import Principal

rpcs = Rpcs("management-keys")


@rpcs.route(
    "GET",
    "/auth/management-keys/validation",
    "ValidateManagementKey",
    schemas.ManagementKeyOut,
    exclude_none=False,
)
def validate_management_key(
    principal: Annotated[Principal, Depends(current_principal)],
) -> schemas.ManagementKeyOut:
    return render.management_key(principal.key)
