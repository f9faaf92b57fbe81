"""A throw-away network namespace with nftables rules that drop UDP, for impairment tests.

These machines have no ``netem``, but root can create a network namespace and, inside it, an
nftables table that drops a random share of packets (``numgen random mod 100 < N drop``).
:class:`Namespace` creates ``ccimp<pid>-<n>`` with loopback up and one more interface carrying
:data:`ADDRESS` (198.18.0.0/15 is the benchmarking range, RFC 2544): aioice leaves 127.0.0.1
out of the host candidates, so a namespace with only ``lo`` would have no ICE candidate at
all. The interface is a ``dummy`` where the kernel has that driver, else a ``veth`` pair with
both ends inside the namespace. Traffic between two sockets on :data:`ADDRESS` is delivered
over loopback and crosses the nftables ``output`` hook once per packet, so a rule dropping N %
of UDP output loses N % in each direction of a media stream, while TCP (the signaling) is
untouched. Nothing leaves the namespace: it has no route to anywhere else.

The namespace is deleted on exit, also when the test fails. Namespaces left behind by a
process that was killed (``ccimp<pid>-*`` whose pid is gone) are deleted on the next use.

:class:`Internet` builds a small internet for the NAT and relay tests (below).

:meth:`Namespace.set_rate_limit` makes the namespace's loopback a bottleneck link instead:
``tc``'s token bucket filter (``tbf``), a shaper with a queue (a few hundred ms of it) that
drops what overflows, the way a thin uplink behaves (a policer that only drops would hide
the queueing delay that REMB's delay-based estimate reacts to). The limit applies to all
traffic inside the namespace, both directions of a call together.

Where namespaces cannot be made (not root, no ``ip`` or ``nft``), :class:`Namespace` raises
:class:`NamespaceUnavailable` with :data:`UNAVAILABLE` in its message: the tests fail with it,
they are never skipped.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from types import TracebackType

__all__ = [
    "ADDRESS",
    "SERVER_ADDRESS",
    "UNAVAILABLE",
    "Home",
    "Internet",
    "Namespace",
    "NamespaceUnavailable",
]

ADDRESS = "198.18.0.1"
"""The namespace's own address: the server listens and ICE gathers on it."""

UNAVAILABLE = (
    "network namespaces unavailable: run as root with iproute2 and nftables installed "
    "(apt-get install iproute2 nftables)"
)

_PREFIX = "ccimp"
_TABLE = "impair"
_counter = itertools.count(1)


class NamespaceUnavailable(RuntimeError):
    """This machine (or user) cannot create the namespace or its nftables rules."""


def _run(argv: list[str], stdin: str | None = None) -> None:
    """Run ``argv``; a non-zero exit raises ``RuntimeError`` with its stderr."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")


def _remove_stale() -> None:
    """Delete namespaces of earlier test processes that no longer exist."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


class Namespace:
    """A network namespace for one test run: ``with Namespace() as ns: ...``.

    Run commands inside it with :meth:`command`; impair its UDP with :meth:`set_udp_loss`,
    :meth:`drop_all_udp` and :meth:`clear_rules` (from outside, while they run).
    """

    def __init__(self, name: str | None = None, address: str = ADDRESS) -> None:
        self.name = name or f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        self.address = address
        self._created = False

    def __enter__(self) -> Namespace:
        missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
        if missing:
            raise NamespaceUnavailable(f"{UNAVAILABLE}; missing: {', '.join(missing)}")
        if os.geteuid() != 0:
            raise NamespaceUnavailable(f"{UNAVAILABLE}; running as uid {os.geteuid()}")
        _remove_stale()
        try:
            _run(["ip", "netns", "add", self.name])
            self._created = True
            self._setup_links()
            self.clear_rules()  # proves nftables works in the namespace
        except Exception as exc:
            self._delete()
            raise NamespaceUnavailable(f"{UNAVAILABLE}; {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._delete()

    def _setup_links(self) -> None:
        ip = ["ip", "-n", self.name]
        try:
            _run([*ip, "link", "add", "imp0", "type", "dummy"])
            links = ["imp0"]
        except RuntimeError:  # no dummy driver (some VM kernels): a veth pair works as well
            _run([*ip, "link", "add", "imp0", "type", "veth", "peer", "name", "imp1"])
            links = ["imp0", "imp1"]
        _run([*ip, "addr", "add", f"{self.address}/24", "dev", "imp0"])
        for link in ("lo", *links):
            _run([*ip, "link", "set", link, "up"])

    def _delete(self) -> None:
        if self._created:
            self._created = False
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=10)

    def command(self, *argv: str) -> list[str]:
        """``argv`` to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def _load(self, rule: str | None) -> None:
        """Replace the ``impair`` table atomically by one holding ``rule`` (or nothing)."""
        script = f"table inet {_TABLE} {{}}\ndelete table inet {_TABLE}\n"
        if rule is not None:
            script += (
                f"table inet {_TABLE} {{\n"
                "  chain out {\n"
                "    type filter hook output priority 0; policy accept;\n"
                f"    {rule}\n"
                "  }\n"
                "}\n"
            )
        _run(self.command("nft", "-f", "-"), stdin=script)

    def set_udp_loss(self, percent: int) -> None:
        """Drop ``percent`` % of UDP packets at random (each packet decided on its own)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be 0..100, not {percent}")
        if percent == 0:
            self.clear_rules()
        elif percent == 100:
            self.drop_all_udp()
        else:
            self._load(f"meta l4proto udp numgen random mod 100 < {percent} drop")

    def drop_all_udp(self) -> None:
        """Cut the media: every UDP packet is dropped (TCP, the signaling, still flows)."""
        self._load("meta l4proto udp drop")

    def clear_rules(self) -> None:
        """No impairment."""
        self._load(None)

    def set_rate_limit(self, kbps: int, queue_ms: int = 300) -> None:
        """Shape everything in the namespace to ``kbps`` kbit/s with a ``queue_ms`` queue."""
        if kbps <= 0 or queue_ms <= 0:
            raise ValueError(f"kbps and queue_ms must be positive, not {kbps}, {queue_ms}")
        # The bucket holds ~20 ms of the rate, never less than two full-size packets.
        burst = max(3200, kbps * 1000 // 8 // 50)
        try:
            _run(self.command("tc", "qdisc", "replace", "dev", "lo", "root", "tbf",
                              "rate", f"{kbps}kbit", "burst", str(burst),
                              "latency", f"{queue_ms}ms"))
        except RuntimeError as exc:
            raise NamespaceUnavailable(
                f"tc's tbf qdisc is unavailable (apt-get install iproute2): {exc}"
            ) from exc

    def clear_rate_limit(self) -> None:
        """Lift :meth:`set_rate_limit` (deleting a missing qdisc is not an error)."""
        subprocess.run(self.command("tc", "qdisc", "del", "dev", "lo", "root"),
                       capture_output=True, timeout=10)

# --------------------------------------------------------------------------- a small internet

SERVER_ADDRESS = "198.19.0.1"
"""The public servers' address (signaling, coturn), on the internet namespace's loopback."""


def _check_tools() -> None:
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        raise NamespaceUnavailable(f"{UNAVAILABLE}; missing: {', '.join(missing)}")
    if os.geteuid() != 0:
        raise NamespaceUnavailable(f"{UNAVAILABLE}; running as uid {os.geteuid()}")


def _nft(ns: str, table: str, chain: str, hook: str, rules: list[str], family: str = "inet",
         kind: str = "filter", priority: str = "0") -> None:
    """Replace table ``family table`` of ``ns`` by one chain holding ``rules`` (none: gone)."""
    script = f"table {family} {table} {{}}\ndelete table {family} {table}\n"
    if rules:
        body = "\n".join(f"    {rule}" for rule in rules)
        script += (
            f"table {family} {table} {{\n  chain {chain} {{\n"
            f"    type {kind} hook {hook} priority {priority}; policy accept;\n{body}\n"
            "  }\n}\n"
        )
    _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=script)


class Home:
    """A home network: a host namespace behind its own router namespace doing NAT.

    The host has ``lan_address`` (10.0.N.2) with the router (10.0.N.1) as its default route;
    the router masquerades everything leaving its ``wan`` link as ``public_address``
    (198.18.N.2), as a home router does: Linux keeps the source port when it can, and the
    router's firewall lets in only replies to what went out (a port-restricted cone NAT, which
    ICE's hole punching gets through).
    """

    def __init__(self, index: int, host: str, router: str) -> None:
        self.index = index
        self.host = host
        self.router = router
        self.lan_address = f"10.0.{index}.2"
        self.public_address = f"198.18.{index}.2"

    def command(self, *argv: str) -> list[str]:
        """``argv`` to run on the home's host."""
        return ["ip", "netns", "exec", self.host, *argv]

    def block_udp(self) -> None:
        """The router drops every UDP packet the host sends out (a UDP-hostile firewall);
        TCP still passes."""
        _nft(self.router, "firewall", "forwarded", "forward",
             ['iifname "lan" meta l4proto udp drop'])

    def allow_udp(self) -> None:
        """Undo :meth:`block_udp`."""
        _nft(self.router, "firewall", "forwarded", "forward", [])


class Internet:
    """Namespaces making a small internet: ``with Internet(homes=2) as net: ...``.

    - ``net.core``: the internet, with :data:`SERVER_ADDRESS` on its loopback for the public
      servers (run them with :meth:`command`) and one link per router (198.18.N.1/24); it
      forwards between routers.
    - ``net.homes[i]``: a :class:`Home` each, N = i + 1.

    :meth:`block_direct` drops UDP forwarded between routers, so peers reach each other only
    through a relay on :data:`SERVER_ADDRESS`. Only these namespaces' addresses exist: none of
    them has a route to the machine's real network. Every namespace is deleted on exit.
    """

    def __init__(self, homes: int = 2) -> None:
        if not 1 <= homes <= 9:
            raise ValueError(f"homes must be 1..9, not {homes}")
        self._count = homes
        self._made: list[str] = []
        self.core = ""
        self.homes: list[Home] = []

    def _new(self) -> str:
        name = f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        _run(["ip", "netns", "add", name])
        self._made.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    @staticmethod
    def _veth(a: str, a_name: str, a_addr: str, b: str, b_name: str, b_addr: str) -> None:
        _run(["ip", "-n", a, "link", "add", a_name, "type", "veth", "peer", "name", b_name,
              "netns", b])
        for ns, name, addr in ((a, a_name, a_addr), (b, b_name, b_addr)):
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", name])
            _run(["ip", "-n", ns, "link", "set", name, "up"])

    def __enter__(self) -> Internet:
        _check_tools()
        _remove_stale()
        try:
            self.core = self._new()
            _run(["ip", "-n", self.core, "addr", "add", f"{SERVER_ADDRESS}/32", "dev", "lo"])
            _run(["ip", "netns", "exec", self.core, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            for index in range(1, self._count + 1):
                router, host = self._new(), self._new()
                self._veth(self.core, f"r{index}", f"198.18.{index}.1/24",
                           router, "wan", f"198.18.{index}.2/24")
                self._veth(router, "lan", f"10.0.{index}.1/24", host, "eth0", f"10.0.{index}.2/24")
                _run(["ip", "-n", router, "route", "add", "default", "via", f"198.18.{index}.1"])
                _run(["ip", "-n", host, "route", "add", "default", "via", f"10.0.{index}.1"])
                _run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
                _nft(router, "nat", "post", "postrouting", ['oifname "wan" masquerade'],
                     family="ip", kind="nat", priority="srcnat")
                # A home router's firewall: nothing unsolicited comes in. Dropped in the input
                # hook, such a packet never gets a conntrack entry, which would otherwise take
                # the tuple of the host's own later packet to that sender and make masquerade
                # pick another source port: no hole punching would ever work.
                _nft(router, "guard", "inbound", "input", ['iifname "wan" ct state new drop'])
                self.homes.append(Home(index, host, router))
        except Exception as exc:
            self._delete()
            raise NamespaceUnavailable(f"{UNAVAILABLE}; {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._delete()

    def _delete(self) -> None:
        made, self._made = self._made, []
        for name in reversed(made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)

    def command(self, *argv: str) -> list[str]:
        """``argv`` to run in the internet namespace (the public servers)."""
        return ["ip", "netns", "exec", self.core, *argv]

    @property
    def peer_ranges(self) -> list[str]:
        """Every address a relay may send to: the routers' public side and the servers'."""
        return [f"198.18.1.0-198.18.{self._count}.255", SERVER_ADDRESS]

    def block_direct(self) -> None:
        """Drop UDP forwarded between routers: no direct path, relay only."""
        _nft(self.core, "firewall", "forwarded", "forward", ["meta l4proto udp drop"])

    def allow_direct(self) -> None:
        """Undo :meth:`block_direct`."""
        _nft(self.core, "firewall", "forwarded", "forward", [])
