"""zdbench: the benchmark suite of zerodown against nginx and HAProxy (`make bench`).

One module per concept: `plan` (what to run, from the environment), `servers`
(backends and proxies from bench/templates), `procs` (every child process and
its clean stop), `wrk` (command line and output parser), `procfs` (CPU and
memory of a process tree), `clients` (idle connections, large bodies),
`deploy` (zerodown deploying its demo app under load),
`model` (results and their aggregation), `targets` (the issue's targets),
`report` (JSON and markdown), `suite` (one run start to finish).
"""
