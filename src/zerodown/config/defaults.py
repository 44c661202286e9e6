"""Named defaults of the keys that have no home elsewhere.

Data-plane limits live in `zerodown.proxy.settings` and routing defaults in
`zerodown.routing`; the config models import those instead of repeating them.
What is here belongs to the listeners and to orchestration (deploys).
"""

from __future__ import annotations

from typing import Final

# [proxy]
LISTEN = ("127.0.0.1:8080",)
WORKERS = 1
# Workers beyond the usable cores only compete for them; a few per core is
# already generous, and each costs a whole interpreter (~25 MB) and its
# start-up. The bound is per core this process may run on (affinity mask).
MAX_WORKERS_PER_CORE = 4
ADMIN = "127.0.0.1:9900"  # loopback: the admin API must be opened on purpose
STATE_DIR = ".zerodown"

# [services.NAME] orchestration
STRATEGY: Final = "rolling"
INSTANCES = 1
CWD = "."
STOP_GRACE = 10.0  # SIGTERM → SIGKILL
DEPLOY_TIMEOUT = 60.0  # deadline of one health gate
PORTS = (20000, 29999)  # where instances zerodown starts get their ports

# rolling: add one new instance before removing an old one, so capacity never drops
MAX_SURGE = 1
MAX_UNAVAILABLE = 0

# blue_green
SCALE_DOWN_DELAY = 600.0  # blue kept warm so `rollback` in this window is instant
PREVIEW_HEADER = "X-Zerodown-Preview"

# canary
CANARY_STEPS = ((10.0, 30.0), (50.0, 30.0))  # (weight %, pause seconds)
# The judge's (analysis/judge.py): each one-sided bound at this confidence.
# 0.95 rather than 0.99: a clean canary then passes after ~300 requests
# instead of ~600; a false rollback costs a redeploy, a false pass is what
# the minimum effects below and the repeated checks of a step guard against.
CANARY_CONFIDENCE = 0.95
MIN_ERROR_INCREASE = 0.01  # one percentage point above stable's error rate matters
MIN_LATENCY_INCREASE = 0.1  # a median 10 % above stable's matters...
MIN_LATENCY_SHIFT = 0.005  # ...and 5 ms: a 1 ms shift on a 2 ms service is noise
MIN_REQUESTS = 100  # fewer canary requests in a step: "inconclusive", never "pass"
STICKY_COOKIE = "zerodown_pool"

# recreate
MAX_PAUSE = 30.0  # longest a request is held while the old release is replaced
WARMUP = 0.0  # extra seconds after the health gate before an instance takes traffic
PREVIEW_PAUSE = 0.0  # blue-green: seconds green is reachable by preview header only
KEEP_RELEASES = 5  # releases kept per service besides the current and the previous one
