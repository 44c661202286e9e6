"""The demo app used by `zerodown demo` and by the tests.

`app` is the ASGI app, `server` runs it under uvicorn (`python -m
zerodown.demo`), `process` starts it as a child process, `run` is `zerodown
demo`.
"""
