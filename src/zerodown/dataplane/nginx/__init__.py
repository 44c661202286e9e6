"""The nginx data plane: zerodown renders nginx.conf, reloads, checks and counts."""

from zerodown.dataplane.nginx.driver import NginxDataPlane
from zerodown.dataplane.nginx.settings import NginxSettings

__all__ = ["NginxDataPlane", "NginxSettings"]
