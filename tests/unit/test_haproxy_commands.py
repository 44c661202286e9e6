"""Table diffs into runtime API commands, and read-back convergence: pure."""

from __future__ import annotations

from zerodown.dataplane.haproxy.commands import converge, expected, plan, sweep
from zerodown.dataplane.haproxy.runtime import ServerRow
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, Split, StickySpec, TargetSpec


def table(
    *stable: str, canary: tuple[str, ...] = (), weight: float = 0.0, **fields: object
) -> RoutingTable:
    service = ServiceSpec(
        name="web",
        stable=PoolSpec(targets=tuple(TargetSpec(address=a) for a in stable)),
        canary=PoolSpec(targets=tuple(TargetSpec(address=a) for a in canary)),
        split=Split(canary_weight=weight),
        **fields,  # type: ignore[arg-type]
    )
    return RoutingTable(services=(service,))


def test_adding_a_canary_adds_a_server_sets_it_ready_and_enables_its_check() -> None:
    step = plan(table("h:1"), table("h:1", canary=("h:2",), weight=50))
    assert step.reload is None
    assert step.commands == (
        "add server be_web/t_h:2 h:2 weight 256 check inter 1000ms rise 2 fall 3 "
        # A runtime server has no idle connection pool unless told (render.IDLE_POOL).
        "observe layer7 error-limit 5 on-error mark-down pool-max-conn -1 pool-purge-delay 5s",
        "set server be_web/t_h:2 state ready",
        "enable health be_web/t_h:2",
    )


def test_moving_the_split_sets_weights_only() -> None:
    step = plan(table("h:1", canary=("h:2",), weight=50), table("h:1", canary=("h:2",), weight=20))
    assert step.commands == ("set server be_web/t_h:2 weight 64",)


def test_a_dropped_target_goes_to_maintenance_then_is_deleted() -> None:
    step = plan(table("h:1", "h:2"), table("h:1"))
    assert step.commands == ("set server be_web/t_h:2 state maint", "del server be_web/t_h:2")


def test_sweep_deletes_dropped_servers_left_in_maintenance_only() -> None:
    rows = [
        row("t_h:1", 256),
        row("t_h:2", 0, admin=0x01),
        row("t_h:3", 1),
        row("x", 0, 1, "be_other"),
    ]
    assert sweep(rows, table("h:1")) == [
        "set server be_web/t_h:2 state drain",
        "set server be_web/t_h:2 state maint",
        "del server be_web/t_h:2",
    ]


def test_drain_is_a_state_and_the_rest_take_its_share() -> None:
    old = table("h:1", "h:2")
    service = old.services[0]
    draining = service.stable.targets[1].model_copy(update={"state": "draining"})
    new = RoutingTable(
        services=(
            service.model_copy(
                update={"stable": PoolSpec(targets=(service.stable.targets[0], draining))}
            ),
        )
    )
    assert plan(old, new).commands == (
        "set server be_web/t_h:2 weight 0",
        "set server be_web/t_h:2 state drain",
    )


def test_what_the_runtime_api_cannot_change_is_a_reload_with_its_reason() -> None:
    assert (
        plan(table("h:1"), RoutingTable()).reload == "services changed (added: none; removed: web)"
    )
    changed = plan(table("h:1"), table("h:1", path="/api"))
    assert changed.reload == "service web: its route, balance, checks, retries or hold changed"
    assert changed.commands == ()
    assert plan(table("h:1"), table("h:1")) == plan(RoutingTable(), RoutingTable())


def row(name: str, weight: int, admin: int = 0, backend: str = "be_web") -> ServerRow:
    return ServerRow(backend, name, "127.0.0.1", 1, 2, admin, weight)


def test_converge_fixes_what_reads_back_wrong_and_names_what_is_missing() -> None:
    want = expected(table("h:1", "h:2", "h:3"))
    rows = [row("t_h:1", 256), row("t_h:2", 10, admin=0x08), row("t_stale", 1)]
    commands, missing = converge(rows, want)
    assert commands == [
        "set server be_web/t_h:2 weight 256",
        "set server be_web/t_h:2 state ready",
        "set server be_web/t_stale state maint",
    ]
    assert missing == ["be_web/t_h:3"]
    assert converge([row("t_h:1", 256)], expected(table("h:1"))) == ([], [])


def test_a_switch_gives_the_new_servers_traffic_before_taking_the_old_ones_out() -> None:
    # Sent one by one: in between, some server must always take requests.
    step = plan(
        table("h:1", canary=("h:2",), weight=0.0), table("h:1", canary=("h:2",), weight=100.0)
    )
    raised = [i for i, c in enumerate(step.commands) if "t_h:2" in c]
    lowered = [i for i, c in enumerate(step.commands) if "t_h:1" in c]
    assert raised
    assert lowered
    assert max(raised) < min(lowered), step.commands


def test_a_server_added_to_a_sticky_backend_gets_its_dynamic_cookie() -> None:
    sticky = StickySpec()
    step = plan(
        table("h:1", sticky=sticky, health=None), table("h:1", "h:2", sticky=sticky, health=None)
    )
    assert step.commands == (
        "add server be_web/t_h:2 h:2 weight 256 pool-max-conn -1 pool-purge-delay 5s",
        "set server be_web/t_h:2 state ready",
        "enable dynamic-cookie backend be_web",
    )
