"""The typed objects of the Management API: snake_case attributes, camelCase on the wire.

Decoding is liberal, like the server: unknown fields are ignored (the hosted API may add some),
and 64-bit integers sent as strings (``tpm``) become ``int``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType


class _Wire(msgspec.Struct, rename="camel", kw_only=True):
    pass


class Budget(_Wire):
    """keyplane-only (not in the hosted API): the key is refused while its spend in the current
    UTC ``period`` (``DAY``, ``WEEK`` or ``MONTH``) reaches ``cents`` USD cents."""

    cents: int
    period: str = "MONTH"

    def wire(self) -> dict[str, str]:
        return {"cents": str(self.cents), "period": self.period}


class ApiKey(_Wire):
    """An inference API key. ``api_key`` (the secret) is set only by create and rotate."""

    api_key_id: str
    team_id: str = ""
    user_id: str = ""
    name: str = ""
    redacted_api_key: str = ""
    api_key: str | None = None
    create_time: datetime | None = None
    modify_time: datetime | None = None
    #: keyplane-only: who made the last change.
    modified_by: str | None = None
    disabled: bool = False
    expire_time: datetime | None = None
    qps: int | None = None
    qpm: int | None = None
    tpm: int | None = None
    acl_strings: list[str] = msgspec.field(default_factory=list)
    #: keyplane-only: the key's spending budget.
    budget: Budget | None = None


class ApiKeyPage(_Wire):
    """One page of ListApiKeys; ``pagination_token`` is set while more pages exist."""

    api_keys: list[ApiKey] = msgspec.field(default_factory=list)
    pagination_token: str | None = None


class ApiKeyUpdate(_Wire):
    """The fields an update changes: only the ones you set are in the field mask.

    ``ApiKeyUpdate(name="ci", qpm=None)`` renames the key and removes its qpm limit, leaving
    every other field as it is. ``None`` clears a field (no limit, no expiry).
    """

    name: str | UnsetType = UNSET
    acl_strings: list[str] | UnsetType = UNSET
    qps: int | UnsetType | None = UNSET
    qpm: int | UnsetType | None = UNSET
    tpm: int | UnsetType | None = UNSET
    disabled: bool | UnsetType = UNSET
    expire_time: datetime | UnsetType | None = UNSET
    #: keyplane-only.
    budget: Budget | UnsetType | None = UNSET

    def field_mask(self) -> str:
        """The camelCase paths of the fields that are set, comma-separated, in field order."""
        return ",".join(
            _camel(name) for name in self.__struct_fields__ if getattr(self, name) is not UNSET
        )

    def api_key(self) -> dict[str, Any]:
        """The ``apiKey`` body: set fields with a value; cleared ones are left out."""
        body: dict[str, Any] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is UNSET or value is None:
                continue
            if name == "tpm":
                value = str(value)
            elif isinstance(value, datetime):
                value = rfc3339(value)
            elif isinstance(value, Budget):
                value = value.wire()
            body[_camel(name)] = value
        return body


class Propagation(_Wire):
    """CheckApiKeyPropagation: per cluster host, whether the key's latest change has arrived."""

    ic_propagation: dict[str, bool] = msgspec.field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Every cluster has the change (and there is at least one cluster)."""
        return bool(self.ic_propagation) and all(self.ic_propagation.values())

    def pending(self) -> list[str]:
        return sorted(host for host, arrived in self.ic_propagation.items() if not arrived)


class Model(_Wire):
    """A model of the team's catalog. ``rps``/``rpm``/``tpm`` are team × model limits, 0 = none."""

    name: str
    version: str = ""
    aliases: list[str] = msgspec.field(default_factory=list)
    input_modalities: list[str] = msgspec.field(default_factory=list)
    output_modalities: list[str] = msgspec.field(default_factory=list)
    rps: int = 0
    rpm: int = 0
    tpm: int = 0
    prompt_text_token_price: str | None = None
    completion_text_token_price: str | None = None
    image_price: str | None = None


class ClusterConfig(_Wire):
    cluster_name: str
    language_models: list[Model] = msgspec.field(default_factory=list)
    image_generation_models: list[Model] = msgspec.field(default_factory=list)
    embedding_models: list[Model] = msgspec.field(default_factory=list)

    def all_models(self) -> list[Model]:
        return [*self.language_models, *self.image_generation_models, *self.embedding_models]


class ModelCatalog(_Wire):
    cluster_configs: list[ClusterConfig] = msgspec.field(default_factory=list)


class EndpointAcl(_Wire):
    acl: str
    description: str = ""
    namespace: str = ""
    key: str = ""
    value: str = ""


class EndpointAcls(_Wire):
    acls: list[EndpointAcl] = msgspec.field(default_factory=list)


class ManagementKey(_Wire):
    """The calling management key, as validation describes it."""

    api_key_id: str
    team_id: str
    scope: str = "SCOPE_TEAM"
    scope_id: str = ""
    owner_user_id: str = ""
    name: str = ""
    acls: list[str] = msgspec.field(default_factory=list)
    redacted_api_key: str = ""
    create_time: datetime | None = None
    modify_time: datetime | None = None


class AuditEvent(_Wire):
    event_time: datetime
    event_id: str
    description: str = ""
    user: str = ""
    operation: str = ""
    entity_type: str = ""
    entity_id: str = ""


class AuditEventPage(_Wire):
    events: list[AuditEvent] = msgspec.field(default_factory=list)
    next_page_token: str | None = None


# -- usage and spend (the hosted billing surface) ------------------------------------------------

TimeUnit = Literal[
    "TIME_UNIT_MINUTE",
    "TIME_UNIT_QUARTER_HOUR",
    "TIME_UNIT_HOUR",
    "TIME_UNIT_DAY",
    "TIME_UNIT_CALENDAR_WEEK",
    "TIME_UNIT_MONTH",
    "TIME_UNIT_NONE",
]
Aggregation = Literal[
    "AGGREGATION_SUM", "AGGREGATION_COUNT", "AGGREGATION_MIN", "AGGREGATION_MAX", "AGGREGATION_AVG"
]


class TimeRange(_Wire):
    """``start_time``/``end_time`` as ``YYYY-MM-DD HH:MM:SS`` read in ``timezone``, or RFC 3339;
    ``end_time`` is exclusive."""

    start_time: str
    end_time: str
    timezone: str = "Etc/GMT"


class UsageValue(_Wire):
    name: str = "usd"
    aggregation: str = "AGGREGATION_SUM"


class AnalyticsRequest(_Wire):
    """The body of a Usage request (``analyticsRequest``)."""

    time_range: TimeRange
    time_unit: str = "TIME_UNIT_DAY"
    values: list[UsageValue] = msgspec.field(default_factory=lambda: [UsageValue()])
    group_by: list[str] = msgspec.field(default_factory=list)
    filters: list[str] = msgspec.field(default_factory=list)


class DataPoint(_Wire):
    timestamp: str
    values: list[float] = msgspec.field(default_factory=list)


class TimeSeries(_Wire):
    group: list[str] = msgspec.field(default_factory=list)
    group_labels: list[str] = msgspec.field(default_factory=list)
    data_points: list[DataPoint] = msgspec.field(default_factory=list)


class Usage(_Wire):
    time_series: list[TimeSeries] = msgspec.field(default_factory=list)
    limit_reached: bool = False


class Cent(_Wire):
    """An amount of USD cents; on the wire ``{"val": "20000"}``."""

    val: int = 0


class SpendingLimits(_Wire):
    hard_sl_auto: Cent | None = None
    effective_hard_sl: Cent | None = None
    soft_sl: Cent | None = None
    effective_sl: Cent | None = None
    hard_sl_override: Cent | None = None


class SpendingLimitsAnswer(_Wire):
    spending_limits: SpendingLimits = msgspec.field(default_factory=SpendingLimits)


class SetSpendingLimitAnswer(_Wire):
    this_bp_soft_spending_limit: Cent | None = None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def rfc3339(moment: datetime) -> str:
    """``moment`` in the contract's form: UTC, microseconds, ``Z`` (naive means UTC)."""
    from datetime import UTC

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
