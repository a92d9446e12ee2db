"""keyplane.client: a typed Python SDK for the Management API, sync (``Client``) and async
(``AsyncClient``), for keyplane and the hosted Management API alike.

    from keyplane.client import ApiKeyUpdate, Client

    with Client() as client:  # KEYPLANE_BASE_URL, KEYPLANE_MANAGEMENT_KEY
        key = client.create_api_key("ci", acls=["api-key:endpoint:chat", "api-key:model:*"])
        client.wait_propagated(key.api_key_id)
        client.update_api_key(key.api_key_id, ApiKeyUpdate(qpm=600))

It imports nothing from keyplane's server side: install keyplane, use only this.
"""

from keyplane.client._async import AsyncClient
from keyplane.client._base import BASE_URL_ENV, MANAGEMENT_KEY_ENV, Retry
from keyplane.client._sync import Client
from keyplane.client.errors import (
    APIError,
    ConfigurationError,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    KeyplaneClientError,
    NotFound,
    PermissionDenied,
    PropagationTimeout,
    RateLimited,
    TransportError,
    Unauthenticated,
    Unavailable,
)
from keyplane.client.types import (
    AnalyticsRequest,
    ApiKey,
    ApiKeyPage,
    ApiKeyUpdate,
    AuditEvent,
    Budget,
    Cent,
    ClusterConfig,
    DataPoint,
    EndpointAcl,
    ManagementKey,
    Model,
    Propagation,
    SpendingLimits,
    TimeRange,
    TimeSeries,
    Usage,
    UsageValue,
)

__all__ = [
    "BASE_URL_ENV",
    "MANAGEMENT_KEY_ENV",
    "APIError",
    "AnalyticsRequest",
    "ApiKey",
    "ApiKeyPage",
    "ApiKeyUpdate",
    "AsyncClient",
    "AuditEvent",
    "Budget",
    "Cent",
    "Client",
    "ClusterConfig",
    "ConfigurationError",
    "DataPoint",
    "EndpointAcl",
    "FailedPrecondition",
    "InternalError",
    "InvalidArgument",
    "KeyplaneClientError",
    "ManagementKey",
    "Model",
    "NotFound",
    "PermissionDenied",
    "Propagation",
    "PropagationTimeout",
    "RateLimited",
    "Retry",
    "SpendingLimits",
    "TimeRange",
    "TimeSeries",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "UsageValue",
]
