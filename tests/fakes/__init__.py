"""Fakes at the documented seams, for tests below end-to-end.

- `FakeRuntime` (runtime.py): the `Runtime` seam. Instances are tiny real
  listeners on 127.0.0.1:0 (the health gate probes over TCP), healthy or not
  as the test says; starts, stops and adoptions are recorded; an instance
  crashes, or dies unseen, on demand. `FakeMachine` is the host they run on:
  it outlives one daemon, as processes do.
- `RecordingDataPlane` (dataplane.py): the `DataPlane` seam. Records every
  routing table and drain; serves the traffic counters a test scripts.
- `rig` (rig.py): a real `Orchestrator` on `SqliteStore(":memory:")` with both.

Every fake tells waiters when its record changes (`Changes`), so tests wait
for a condition with a deadline, never for time.
"""

from fakes.changes import WAIT, Changes
from fakes.dataplane import PoolTraffic, RecordingDataPlane, describe
from fakes.rig import FAST, Json, Rig, as_json, next_event, rig, service_toml, web
from fakes.runtime import FakeApp, FakeMachine, FakeRuntime

__all__ = [
    "FAST",
    "WAIT",
    "Changes",
    "FakeApp",
    "FakeMachine",
    "FakeRuntime",
    "Json",
    "PoolTraffic",
    "RecordingDataPlane",
    "Rig",
    "as_json",
    "describe",
    "next_event",
    "rig",
    "service_toml",
    "web",
]
