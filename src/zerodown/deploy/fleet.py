"""A service's running instances and how traffic reaches them, and the
ServiceSpec the data plane gets from that. Pure: the executor changes a
Fleet, then applies `fleet.spec()`.

Traffic is derived, never stored twice: an instance is in the routing table
when its id is in `routed`; it is there as `draining` when also in
`draining`; with a split, instances of `canary_version` form the canary pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zerodown.config.service import ServiceConfig
from zerodown.release import Instance
from zerodown.routing import (
    TABLE_FEATURES,
    CohortRule,
    HoldSpec,
    PoolSpec,
    ServiceSpec,
    Split,
    TableFeature,
    TargetSpec,
)


@dataclass
class Fleet:
    name: str
    config: ServiceConfig
    current: str | None = None  # the version that serves when no deploy runs
    instances: list[Instance] = field(default_factory=list)
    routed: set[str] = field(default_factory=set)
    draining: set[str] = field(default_factory=set)
    canary_version: str | None = None  # with a split: this version is the canary pool
    canary_weight: float = 0.0
    preview_version: str | None = None  # reachable with the preview header before any weight
    hold: bool = False
    maintenance_html: str | None = None  # read once from recreate.maintenance_page
    carries: frozenset[TableFeature] = TABLE_FEATURES  # what the data plane carries

    def __repr__(self) -> str:
        return f"<Fleet {self.name} current={self.current} instances={len(self.instances)}>"

    # -- queries -----------------------------------------------------------------

    def of_version(self, version: str) -> list[Instance]:
        return [i for i in self.instances if i.version == version]

    def ready(self, version: str) -> list[Instance]:
        return [i for i in self.of_version(version) if i.state == "ready"]

    def serving(self, version: str) -> list[Instance]:
        """Ready, routed and not draining: taking new requests now."""
        return [i for i in self.ready(version) if i.id in self.routed and i.id not in self.draining]

    def find(self, instance_id: str) -> Instance | None:
        return next((i for i in self.instances if i.id == instance_id), None)

    def traffic(self) -> dict[str, float]:
        """Percent of new requests per version, as the table splits it."""
        versions = {
            i.version
            for i in self.instances
            if i.id in self.routed
            and i.id not in self.draining
            and i.version != self.preview_version  # reached by the preview header only
        }
        if not versions:
            return {}
        if self.canary_version in versions and len(versions) > 1:
            rest = [v for v in versions if v != self.canary_version]
            share = (100.0 - self.canary_weight) / len(rest)
            return {**{v: share for v in rest}, self.canary_version: self.canary_weight}
        counts = {v: len(self.serving(v)) for v in versions}
        total = sum(counts.values()) or 1
        return {v: 100.0 * n / total for v, n in counts.items()}

    # -- changes -----------------------------------------------------------------

    def route(self, instances: list[Instance]) -> None:
        for instance in instances:
            self.routed.add(instance.id)
            self.draining.discard(instance.id)

    def start_draining(self, instances: list[Instance]) -> None:
        for instance in instances:
            if instance.id in self.routed:
                self.draining.add(instance.id)

    def unroute(self, instances: list[Instance]) -> None:
        for instance in instances:
            self.routed.discard(instance.id)
            self.draining.discard(instance.id)

    def forget(self, instance: Instance) -> None:
        self.unroute([instance])
        self.instances = [i for i in self.instances if i.id != instance.id]

    def pool_mode(self) -> None:
        self.canary_version = None
        self.canary_weight = 0.0
        self.preview_version = None

    # -- the data plane's view -----------------------------------------------------

    def spec(self) -> ServiceSpec:
        stable: list[TargetSpec] = []
        canary: list[TargetSpec] = []
        for instance in self.instances:
            if instance.id not in self.routed:
                continue
            target = TargetSpec(
                address=instance.address,
                state="draining" if instance.id in self.draining else "ready",
                version=instance.version,
            )
            is_canary = instance.version in (self.canary_version, self.preview_version)
            (canary if is_canary and self._splitting() else stable).append(target)
        # Every other key comes from the config, through its one mapping.
        return self.config.spec(
            self.name,
            stable=PoolSpec(targets=tuple(stable)),
            canary=PoolSpec(targets=tuple(canary)),
            split=self._split(),
            hold=self._hold_spec(),
        )

    def _splitting(self) -> bool:
        return self.canary_version is not None or self.preview_version is not None

    def _split(self) -> Split:
        if not self._splitting():
            return Split()
        canary = self.config.canary
        cohorts = tuple(c.rule() for c in canary.cohorts)
        if self.preview_version is not None and "cohorts" in self.carries:
            # Blue-green preview: this header reaches green before the switch.
            header = self.config.blue_green.preview_header
            cohorts = (CohortRule(header=header, values=("1", "true"), pool="canary"), *cohorts)
        sticky = canary.sticky_cookie if self.canary_version is not None else None
        if "cohorts" not in self.carries:
            cohorts = ()  # a config asking for some was refused at load
        if "sticky_cookie" not in self.carries:
            sticky = None  # the default cookie: not carried, so not asked for
        return Split(canary_weight=self.canary_weight, cohorts=cohorts, sticky_cookie=sticky)

    def _hold_spec(self) -> HoldSpec | None:
        if not self.hold or "hold" not in self.carries:
            return None
        return HoldSpec(
            timeout=self.config.recreate.max_pause, maintenance_html=self.maintenance_html
        )
