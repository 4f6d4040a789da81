"""Hosts on one machine: Linux network namespaces joined by virtual links (issue 22, the
multi-node test and `make bench-cluster`).

Each host is a network namespace with one veth link to a bridge in the root namespace.
The bridge holds the subnet's last address, so this process (tests, benchmarks) reaches
every host directly; hosts reach each other through the bridge, and nothing leaves the
machine. `entered(host)` moves the calling thread into a host's namespace (setns): what
it binds and what it starts there (`subprocess` children inherit the thread's namespace)
lives on that host, with its own ports and loopback. Cutting a host's link is
`cut(host)`; ending every process on it is `kill(host)`.

Names carry this process's id, so parallel runs do not collide, and `sweep()` removes
what a run that crashed left (namespaces and bridges whose process is gone). Needs root
and iproute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: every name this module gives starts with it (namespaces, bridges, links)
PREFIX = "llmos"
CLONE_NEWNET = 0x40000000
#: the subnets used are 10.77.N.0/24, N picked per run
SUBNET_BASE = "10.77"


class NetnsError(RuntimeError):
    """A namespace or link could not be made (not root, no iproute2)."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its output."""
    binary = shutil.which("ip")
    if binary is None:
        raise NetnsError("iproute2's `ip` is missing (apt-get install -y iproute2)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def available() -> str:
    """Why namespaces cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is missing"
    return ""


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise NetnsError(f"setns({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address on the subnet and its link's root end."""

    name: str
    namespace: str
    address: str
    link: str


@dataclass
class Network:
    """Hosts named `names` on one subnet, created by `create()`, removed by `remove()`."""

    names: tuple[str, ...]
    run: int = field(default_factory=os.getpid)
    hosts: dict[str, Host] = field(default_factory=dict, init=False)
    subnet: str = field(default="", init=False)

    @property
    def client_address(self) -> str:
        """This machine's own address on the subnet (the bridge's): where calls from
        outside the hosts come from."""
        return f"{self.subnet}.254"

    @property
    def bridge(self) -> str:
        return f"{PREFIX}br{self.run}"[:15]

    def create(self) -> Network:
        """The bridge, each host's namespace and link, and addresses; self."""
        sweep()
        self.subnet = subnet = _free_subnet(self.run)
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.client_address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for index, name in enumerate(self.names):
                host = Host(
                    name,
                    f"{PREFIX}-{name}-{self.run}",
                    f"{subnet}.{index + 1}",
                    f"{PREFIX}{index}v{self.run}"[:15],
                )
                ip("netns", "add", host.namespace)
                self.hosts[name] = host
                ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0",
                   "netns", host.namespace)  # fmt: skip
                ip("link", "set", host.link, "master", self.bridge, "up")
                inside = ("netns", "exec", host.namespace, "ip")
                ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip(*inside, "link", "set", "eth0", "up")
                ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @contextlib.contextmanager
    def entered(self, name: str) -> Iterator[Host]:
        """The calling thread inside host `name`'s namespace, back where it was after."""
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        try:
            _setns(f"/run/netns/{self.hosts[name].namespace}")
            try:
                yield self.hosts[name]
            finally:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(own, CLONE_NEWNET) != 0:
                    raise NetnsError("could not return to this thread's own namespace")
        finally:
            os.close(own)

    def pids(self, name: str) -> list[int]:
        """Every process running on host `name`."""
        found = ip("netns", "pids", self.hosts[name].namespace, check=False)
        return [int(pid) for pid in found.split()]

    def kill(self, name: str) -> list[int]:
        """kill -9 of every process on host `name` (a host that lost power); their ids."""
        pids = self.pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def cut(self, name: str) -> None:
        """Take host `name`'s link down: it is cut off, its processes still run."""
        ip("link", "set", self.hosts[name].link, "down")

    def mend(self, name: str) -> None:
        """Bring host `name`'s link back up."""
        ip("link", "set", self.hosts[name].link, "up", "master", self.bridge)

    def remove(self) -> None:
        """End every process still on a host, delete the namespaces (their links go with
        them) and the bridge."""
        for name, host in list(self.hosts.items()):
            self.kill(name)
            # the link goes with the namespace only once nothing holds that (a socket)
            ip("link", "del", host.link, check=False)
            ip("netns", "del", host.namespace, check=False)
            del self.hosts[name]
        ip("link", "del", self.bridge, check=False)


def _free_subnet(run: int) -> str:
    """A 10.77.N prefix no interface on this machine uses, starting from the run's id."""
    used = set(re.findall(rf"{re.escape(SUBNET_BASE)}\.(\d+)\.", ip("-4", "addr")))
    for step in range(250):
        candidate = (run + step) % 250 + 1
        if str(candidate) not in used:
            return f"{SUBNET_BASE}.{candidate}"
    raise NetnsError("no free 10.77.N.0/24 subnet")


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def sweep() -> list[str]:
    """Remove the namespaces and bridges of runs whose process is gone; their names."""
    removed: list[str] = []
    if available():
        return removed
    for line in ip("netns", "list", check=False).splitlines():
        namespace = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}-\w+-(\d+)", namespace)
        if match and not _alive(int(match.group(1))):
            for pid in ip("netns", "pids", namespace, check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", namespace, check=False)
            removed.append(namespace)
    links = ip("-o", "link", check=False)
    for match in re.finditer(rf"\d+: ({PREFIX}(?:br|\d+v)(\d+))[:@]", links):
        if not _alive(int(match.group(2))):
            ip("link", "del", match.group(1), check=False)
            removed.append(match.group(1))
    return removed
