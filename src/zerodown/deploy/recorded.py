"""What the store says of a service, read and written when it may be failing.

A deploy whose store fails must still end cleanly (executor.py,
`_store_failed`): these read what they can and fall back to what the fleet
knows, rather than stop what serves because the store cannot say.
"""

from __future__ import annotations

from zerodown.deploy.fleet import Fleet
from zerodown.store.base import Store, StoreError


def store_message(error: StoreError) -> str:
    # sqlite3's own words ("database or disk is full") without our "store: " prefix.
    return str(error.__cause__ or error)


def recorded_ids(store: Store, fleet: Fleet) -> set[str]:
    """Ids of the instances the store knows; when even reads fail, the fleet's
    (stopping what serves because the store cannot say would be an outage)."""
    try:
        return {i.id for i in store.instances(fleet.name)}
    except StoreError:
        return {i.id for i in fleet.instances}


def recorded_current(store: Store, service: str, fallback: str | None) -> str | None:
    try:
        return store.current(service)
    except StoreError:
        return fallback


def record_current(store: Store, service: str, version: str) -> str:
    """Try to make the store agree that `version` serves; say so if it cannot."""
    try:
        store.set_current(service, version)
    except StoreError:
        return ", which the store could not record as current"
    return ""
