"""LogStream: a proxy's log lines over loopback TCP, handed on as whole lines."""

from __future__ import annotations

import asyncio

from harness import run, until
from zerodown.dataplane import logstream
from zerodown.dataplane.accesslog import LogTarget
from zerodown.dataplane.logstream import LogStream


def test_whole_lines_are_handed_on_in_batches_and_the_port_is_kept() -> None:
    async def main() -> None:
        got: list[bytes] = []
        stream = LogStream(got.append)
        target = stream.open(None)
        assert target.server.startswith("tcp:127.0.0.1:")
        assert target.key.isalnum()
        host, _, port = target.server.removeprefix("tcp:").rpartition(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"k a b 1\nk a b 2\nk a")  # the last line cut in two
        await writer.drain()
        await until(lambda: got == [b"k a b 1\nk a b 2\n"], "the two whole lines", 2.0)
        writer.write(b" b 3\n" + b"k a b 4\n" * 100)
        await writer.drain()
        await until(lambda: b"".join(got).count(b"\n") == 103, "103 lines", 2.0)
        assert len(got) <= 3  # read at most every READ_INTERVAL: batches, not a call a line
        assert b"k a b 3\n" in got[1]
        writer.close()
        stream.close()
        again = LogStream(got.append)
        assert again.open(target) == target  # free again: same port, same key
        again.close()
        udp_era = LogStream(got.append)  # a saved UDP target: its key, any port
        assert udp_era.open(LogTarget("127.0.0.1:9", "ab")).key == "ab"
        udp_era.close()

    assert logstream.READ_INTERVAL >= 0.01
    run(main())
