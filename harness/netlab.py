"""Test hosts in network namespaces: for what the API refuses on loopback.

The API server refuses loopback addresses in EndpointSlices (and a real pod never has
one), so the tests that need the secondaries' EndpointSlice put every "pod" in a
network namespace of its own, joined to a bridge that this harness creates:

    root namespace: bridge bhl<N> 10.213.N.1/24  (the API proxies listen here)
    pod namespace:  eth0 10.213.N.<host>/24, lo, default route via 10.213.N.1

All these addresses exist only on interfaces the test made, on this machine; nothing
is routed anywhere else. Each pod then also has its own 127.0.0.1, like a real pod.
"""

from __future__ import annotations

import subprocess
import threading

from harness.loopback import claim

_lock = threading.Lock()


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


class NetLab:
    """A bridge and a namespace per host; ``take()`` gives the next host's IP."""

    def __init__(self) -> None:
        with _lock:
            self.subnet = next((n for n in range(1, 251) if claim(f"netlab-{n}")), 0)
        if not self.subnet:
            raise RuntimeError("no free NetLab subnet (250 in use)")
        # A bridge left by a run that was killed: ours now, since we hold the claim.
        subprocess.run(["ip", "link", "del", f"bhl{self.subnet}"], capture_output=True,
                       timeout=10, check=False)
        self.bridge = f"bhl{self.subnet}"
        self.api_host = f"10.213.{self.subnet}.1"
        self._hosts = 0
        self._netns: dict[str, str] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.api_host}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def take(self, default_route: bool = True) -> str:
        """The next host's IP; without ``default_route`` the host reaches only the bridge's
        subnet, so nothing it sends can leave the machine (harness.kubenode's nodes)."""
        self._hosts += 1
        host = self._hosts + 1
        ip = f"10.213.{self.subnet}.{host}"
        netns = f"bh{self.subnet}-{host}"
        outside, inside = f"bh{self.subnet}h{host}", f"bh{self.subnet}p{host}"
        for stale in (["netns", "del", netns], ["link", "del", outside]):
            # Left by a killed run that held our subnet (a veth also outlives its netns's
            # name for as long as the kernel takes to destroy the netns).
            subprocess.run(["ip", *stale], capture_output=True, timeout=10, check=False)
        self._netns[ip] = netns  # close() removes it even if the rest fails
        _ip("netns", "add", netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", netns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("link", "set", inside, "name", "eth0", netns=netns)
        _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        _ip("link", "set", "lo", "up", netns=netns)
        if default_route:
            _ip("route", "add", "default", "via", self.api_host, netns=netns)
        return ip

    def netns(self, ip: str) -> str:
        """The name of the namespace of the host ``ip`` (under /run/netns)."""
        return self._netns[ip]

    def link(self, ip: str) -> str:
        """The root-side end of the host's veth: ``ip link set <it> down`` cuts it off the
        API (and every other host on the bridge)."""
        host = ip.rsplit(".", 1)[1]
        return f"bh{self.subnet}h{host}"

    def wrap(self, ip: str, argv: list[str]) -> list[str]:
        """Run ``argv`` inside the host's namespace (ip execs it: the pid stays)."""
        return ["ip", "netns", "exec", self._netns[ip], *argv]

    def close(self) -> None:
        for ip, netns in self._netns.items():
            for gone in (["link", "del", self.link(ip)], ["netns", "del", netns]):
                subprocess.run(["ip", *gone], capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10,
                       check=False)
