"""Faults on the link between two namespaces (see ``netns.py``), imposed with nftables.

The rules are loaded *inside* the namespaces, so nothing on the host changes and the rules die
with the namespaces. Only UDP is touched (``meta l4proto udp``): a lost ARP request would stall
the link for the kernel's one-second neighbour retry. Every rule has a counter.

- loss: ``numgen random mod 100 < N drop`` in the netdev *ingress* hook of the receiving veth
  end (where that hook is missing, the inet *input* hook of the receiving namespace): the
  sender cannot tell, as on a real lossy link.
- duplication: ``numgen random mod 100 < N dup to "<veth>"`` in the netdev *egress* hook of the
  sending veth end (Linux >= 5.16, nft >= 1.0.1).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final

from netns import NetnsPair, netns_available, veth_pair

__all__ = ("Fault", "NftSupport", "impose_duplication", "impose_loss", "nft_support")

#: Bound on each ``nft`` command; they normally take milliseconds.
NFT_TIMEOUT: Final = 10.0


def _egress_table(name: str, device: str, statement: str) -> str:
    # One statement per line: nft 1.0.6 rejects `}` right after a statement on the same line.
    return f"""table netdev {name} {{
    chain faults {{
        type filter hook egress device "{device}" priority 0; policy accept;
        meta l4proto udp {statement}
    }}
}}
"""


def _ingress_table(name: str, device: str, statement: str) -> str:
    return f"""table netdev {name} {{
    chain faults {{
        type filter hook ingress device "{device}" priority 0; policy accept;
        meta l4proto udp {statement}
    }}
}}
"""


def _input_table(name: str, statement: str) -> str:
    return f"""table inet {name} {{
    chain faults {{
        type filter hook input priority 0; policy accept;
        meta l4proto udp {statement}
    }}
}}
"""


def _load(net: NetnsPair, ns: str, ruleset: str) -> str | None:
    """Load ``ruleset`` into ``ns``; ``None``, or nft's error message."""
    try:
        result = net.run(ns, ["nft", "-f", "-"], input=ruleset, timeout=NFT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return None if result.returncode == 0 else result.stderr.strip() or "nft failed"


def _counter(net: NetnsPair, ns: str, family: str, table: str) -> int:
    """The packets counted by the rules of ``table`` in ``ns``."""
    listing = net.run(ns, ["nft", "-j", "list", "table", family, table], timeout=NFT_TIMEOUT)
    packets = 0
    for item in json.loads(listing.stdout)["nftables"]:
        for expression in item.get("rule", {}).get("expr", []):
            if "counter" in expression:
                packets += int(expression["counter"]["packets"])
    return packets


@dataclass(frozen=True)
class NftSupport:
    """What nftables can do in a namespace here."""

    #: Why no fault can be imposed at all (a skip reason), or ``None``.
    unavailable: str | None
    #: Why the netdev ingress hook is missing (loss then uses inet input), or ``None``.
    no_ingress: str | None
    #: Why the netdev egress hook is missing (no duplication then), or ``None``.
    no_egress: str | None


@functools.cache
def nft_support() -> NftSupport:
    """Probe, once per process, which nftables hooks work inside a throw-away namespace."""
    reason = netns_available()
    if reason is None and shutil.which("nft") is None:
        reason = "fault injection needs the `nft` command (Debian/Ubuntu package nftables)"
    if reason is not None:
        return NftSupport(reason, reason, reason)
    with veth_pair() as net:
        ingress = _load(net, net.ns_a, _ingress_table("adg_in", net.veth_a, "counter accept"))
        egress = _load(net, net.ns_a, _egress_table("adg_out", net.veth_a, "counter accept"))
        no_egress = (
            None
            if egress is None
            else f"no netdev egress hook (needs Linux >= 5.16, nft >= 1.0.1): {egress}"
        )
        if ingress is None:
            return NftSupport(None, None, no_egress)
        no_ingress = f"no netdev ingress hook: {ingress}"
        fallback = _load(net, net.ns_a, _input_table("adg_input", "counter accept"))
        if fallback is not None:
            reason = f"cannot load an nftables table in a namespace: {fallback}"
            return NftSupport(reason, no_ingress, no_egress)
        return NftSupport(None, no_ingress, no_egress)


@dataclass(frozen=True)
class Fault:
    """One nftables table imposing a fault on the datagrams from one namespace to the other."""

    ns: str
    family: str
    table: str

    def count(self, net: NetnsPair) -> int:
        """The datagrams the fault has hit so far."""
        return _counter(net, self.ns, self.family, self.table)


def impose_loss(net: NetnsPair, sender: str, percent: int) -> Fault:
    """Lose ``percent``% of the UDP datagrams ``sender`` (one of the pair) sends to the other."""
    receiver, device = (net.ns_b, net.veth_b) if sender == net.ns_a else (net.ns_a, net.veth_a)
    statement = f"numgen random mod 100 < {percent} counter drop"
    if nft_support().no_ingress is None:
        fault = Fault(receiver, "netdev", "adg_loss")
        error = _load(net, receiver, _ingress_table(fault.table, device, statement))
    else:
        fault = Fault(receiver, "inet", "adg_loss")
        error = _load(net, receiver, _input_table(fault.table, statement))
    assert error is None, error
    return fault


def impose_duplication(net: NetnsPair, sender: str, percent: int) -> Fault:
    """Send ``percent``% of the UDP datagrams ``sender`` sends to the other twice."""
    device = net.veth_a if sender == net.ns_a else net.veth_b
    fault = Fault(sender, "netdev", "adg_dup")
    statement = f'numgen random mod 100 < {percent} counter dup to "{device}"'
    error = _load(net, sender, _egress_table(fault.table, device, statement))
    assert error is None, error
    return fault
