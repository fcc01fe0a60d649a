"""Multicast group membership: the socket option a join or a leave sets, checked first.

Shared by :class:`~anydgram.DatagramEndpoint` and :class:`~anydgram.SyncDatagramEndpoint`;
every check happens before any system call that could change the socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._io_core import SocketLike

__all__ = ("membership_option", "set_membership")


def membership_option(
    family: int, group: str, interface: str | int | None, *, join: bool
) -> tuple[int, int, bytes]:
    """The ``(level, option, value)`` that joins (or leaves) ``group`` on a socket of ``family``.

    Raises:
        TypeError: ``group`` or ``interface`` has the wrong type.
        ValueError: ``group`` is not a multicast address of ``family``, or the interface is
            unknown.
    """
    if interface is not None and (
        isinstance(interface, bool) or not isinstance(interface, str | int)
    ):
        raise TypeError(f"interface must be None, a str or an int, not {type(interface).__name__}")
    if not isinstance(group, str):
        raise TypeError(f"group must be a str, not {type(group).__name__}")
    try:
        address = ipaddress.ip_address(group)
    except ValueError:
        raise ValueError(f"{group!r} is not an IP address") from None
    if not address.is_multicast:
        raise ValueError(f"{group!r} is not a multicast address")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError("give the interface with interface=, not as a scope in the group")
    if isinstance(interface, str):
        try:
            ipaddress.IPv4Address(interface)
        except ValueError:
            try:
                interface = socket.if_nametoindex(interface)
            except OSError:
                raise ValueError(f"unknown network interface {interface!r}") from None
    if isinstance(interface, int) and not 0 <= interface < 2**31:
        raise ValueError(f"interface index out of range: {interface}")
    if address.version == 4:
        if family != socket.AF_INET:
            raise ValueError("an IPv4 group needs an IPv4 endpoint")
        # struct ip_mreqn: group, local address, interface index.
        local = interface if isinstance(interface, str) else "0.0.0.0"
        index = interface if isinstance(interface, int) else 0
        value = struct.pack("=4s4si", address.packed, socket.inet_aton(local), index)
        option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
        return socket.IPPROTO_IP, option, value
    if family != socket.AF_INET6:
        raise ValueError("an IPv6 group needs an IPv6 endpoint")
    if isinstance(interface, str):
        # An address string is the right type, just not meaningful for IPv6.
        raise ValueError(  # noqa: TRY004
            "an IPv6 group takes an interface name or index, not an address"
        )
    # struct ipv6_mreq: group, interface index.
    value = struct.pack("=16sI", address.packed, interface or 0)
    option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
    return socket.IPPROTO_IPV6, option, value


def set_membership(
    sock: SocketLike, group: str, interface: str | int | None, *, join: bool
) -> None:
    """Join (or leave) ``group`` on ``sock``.

    Raises:
        TypeError: ``group`` or ``interface`` has the wrong type.
        ValueError: ``group`` is not a multicast address of the socket's family, or no
            network interface has the given name, index or (IPv4) address (the kernel's
            ``ENODEV`` is the ``__cause__``).
        OSError: The kernel refused for another reason.
    """
    level, option, value = membership_option(sock.family, group, interface, join=join)
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:
        if exc.errno == errno.ENODEV and interface is not None:
            raise ValueError(f"no such network interface: {interface!r}") from exc
        raise
