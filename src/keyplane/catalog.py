"""The model catalog, built once from the settings: names, aliases, where each model runs.

Both planes read it: the control plane answers ListModels with it, the gateway resolves an alias
to its canonical model, finds the model's upstream and applies the team × model limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.settings import ModelSettings, Settings


@dataclass(frozen=True, slots=True)
class CatalogModel:
    spec: ModelSettings
    upstream_url: str

    @property
    def name(self) -> str:
        return self.spec.name


class Catalog:
    def __init__(self, settings: Settings) -> None:
        builtin = f"{settings.model_server.url}/v1"
        self.clusters = [c.name for c in settings.clusters]
        self.models = [
            CatalogModel(m, (m.upstream_url or builtin).rstrip("/")) for m in settings.models
        ]
        self._by_name: dict[str, CatalogModel] = {}
        for model in self.models:
            for name in (model.name, *model.spec.aliases):
                self._by_name[name] = model

    def resolve(self, name: str, cluster: str | None = None) -> CatalogModel | None:
        """The canonical model for a name or alias, if ``cluster`` serves it."""
        model = self._by_name.get(name)
        if model is None:
            return None
        if cluster is not None and model.spec.clusters and cluster not in model.spec.clusters:
            return None
        return model

    def in_cluster(self, cluster: str) -> list[CatalogModel]:
        return [m for m in self.models if not m.spec.clusters or cluster in m.spec.clusters]
