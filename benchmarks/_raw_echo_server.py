"""A raw blocking UDP echo server on 127.0.0.1, for the benchmarks' client rows.

Prints its port on stdout, then echoes every datagram to its sender with one ``recvfrom`` and
one ``sendto`` per datagram. It stops by itself after ``--max-seconds``, after
``--idle-seconds`` without a datagram, or when its parent goes away.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

from _common import LOOPBACK, SERVER_CPU, pin_to_cpu

#: Datagrams echoed between two looks at the clock.
_CHECK_EVERY = 4096
#: How long one blocking receive may wait (SO_RCVTIMEO): bounds every wait without the extra
#: poll() per call that ``socket.settimeout`` would add.
_RECV_TIMEOUT = 0.5


def serve(sock: socket.socket, *, max_seconds: float, idle_seconds: float) -> int:
    """Echo until a limit is reached; return how many datagrams were echoed."""
    parent = os.getppid()
    recvfrom, sendto = sock.recvfrom, sock.sendto
    start = last_seen = time.monotonic()
    echoed = 0
    while True:
        before = echoed
        try:
            for _ in range(_CHECK_EVERY):
                data, address = recvfrom(65536)
                sendto(data, address)
                echoed += 1
        except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO expired: nothing came
            pass
        except ConnectionRefusedError:  # a client left before its reply; not our problem
            pass
        now = time.monotonic()
        if echoed != before:
            last_seen = now
        if now - start > max_seconds or now - last_seen > idle_seconds:
            return echoed
        if os.getppid() != parent:
            return echoed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", type=int, default=SERVER_CPU)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    pin_to_cpu(args.cpu)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        seconds = int(_RECV_TIMEOUT)
        micros = int((_RECV_TIMEOUT - seconds) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))
        sock.bind((LOOPBACK, 0))
        print(sock.getsockname()[1], flush=True)
        try:
            serve(sock, max_seconds=args.max_seconds, idle_seconds=args.idle_seconds)
        except KeyboardInterrupt:
            sys.exit(130)


if __name__ == "__main__":
    main()
