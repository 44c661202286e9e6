"""The retry loop of one exchange: which target gets the next attempt and
whether there is one (retry.after_failure: nginx's proxy_next_upstream
rules), within the service's tries, retry_timeout and retry budget; and the
hold of a request that no target can take yet (recreate: wait, or a
maintenance page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zerodown.errors import HoldTimeout, NoHealthyTarget, ProxyError, ShuttingDown
from zerodown.proxy.attempt import AttemptFailed
from zerodown.proxy.response import Maintenance
from zerodown.proxy.retry import Step, after_failure

if TYPE_CHECKING:
    from zerodown.proxy.exchange import Exchange
    from zerodown.proxy.service import Choice, Service
    from zerodown.proxy.target import Target


async def forward(exchange: Exchange, service: Service) -> None:
    """Attempts at targets of `service` until one answers; the last error if none does."""
    choice = service.choose(exchange.head, exchange.client_ip, exchange.path)
    exchange.set_cookie = choice.set_cookie
    deadline = exchange.loop.time() + service.spec.retry_timeout
    tried: list[Target] = []
    raced = False
    last_error: ProxyError | None = None
    service.budget.record_request(exchange.loop.time())
    target = service.pick(choice, tried)
    while True:
        if target is None and not tried and service.spec.hold is not None:
            service, choice = await _hold(exchange, service)
            target = service.pick(choice, tried)
            continue
        if target is None:
            # Every candidate failed: the client learns why the last one did.
            raise last_error or NoHealthyTarget(service.unavailable_reason())
        if service.sticky is not None:
            exchange.set_cookie = service.sticky_header(
                choice, target, exchange.head, exchange.client.forwarded
            )
        try:
            await exchange.attempt(service, target, fresh=raced)
            return
        except AttemptFailed as failure:
            if failure.target_fault:
                service.observe(target, ok=False)
            step = _after(exchange, failure, service, raced, len(tried) + 1, deadline)
            if step == "race":
                raced = True  # the keep-alive race: once more, same target, new connection
                continue
            tried.append(target)
            last_error = failure.error
            if step == "stop":
                raise failure.error from None
            failed, target = target, service.pick(choice, tried)
            # Spend the budget and count a retry only when there is a next
            # target: with none left nothing is retried, and a phantom retry
            # would both inflate the stats and starve real retries of budget.
            if target is None or not service.budget.try_spend(exchange.loop.time()):
                raise failure.error from None
            if failed.metrics is not None:
                failed.metrics.retry()
            exchange.retrying()
            raced = False


async def _hold(exchange: Exchange, service: Service) -> tuple[Service, Choice]:
    """Nothing can serve now: wait for a target (recreate) or show maintenance."""
    hold = service.spec.hold
    assert hold is not None
    if hold.maintenance_html is not None:
        raise Maintenance(hold.maintenance_html, hold.retry_after)
    routes = exchange.routes
    found = await routes.wait_for_target(service.name, exchange.loop.time() + hold.timeout)
    if found is None and routes.stopping:
        raise ShuttingDown(f"no target for {service.name}: the proxy is shutting down")
    if found is None:
        raise HoldTimeout(
            f"no target for {service.name} within the hold timeout ({hold.timeout:g}s)"
        )
    return found, found.choose(exchange.head, exchange.client_ip, exchange.path)


def _after(
    exchange: Exchange,
    failure: AttemptFailed,
    service: Service,
    raced: bool,
    tried: int,
    deadline: float,
) -> Step:
    if exchange.cut is not None:
        return "stop"  # cut from outside: this exchange is over
    return after_failure(
        failure.attempt,
        raced=raced,
        idempotent=exchange.head.idempotent,
        replayable=exchange.replayable,
        tried=tried,
        tries=service.spec.tries,
        time_left=deadline - exchange.loop.time(),
    )
