"""Types of the optional compiled fast path (``_speedups.c``); see ``_compiled.py``."""

from typing import Any, Final

from ._io_core import Received

MMSGHDR_SIZE: Final[int]
IOVEC_SIZE: Final[int]

def unpack_batch(
    lengths: list[int],
    names: bytes,
    data: memoryview,
    offsets: list[int],
    name_offsets: list[int],
    namelen: int,
    limit: int,
    addresses: dict[bytes, Any],
    decode: Any,
    cache_size: int,
    /,
) -> tuple[list[Received], int, int]: ...
def split_segments(data: bytes, size: int, tail: tuple[Any, ...], /) -> list[Received]: ...

class ReplySlots:
    count: int
    capacity: int
    blocked: bool
    @property
    def _slot_size(self) -> int: ...
    @property
    def _names(self) -> dict[Any, int]: ...
    @property
    def _peers(self) -> list[Any]: ...
    def _setup_slots(
        self,
        buffer: Any,
        iovecs: Any,
        messages: Any,
        slot_size: int,
        capacity: int,
        names: dict[Any, int],
        peers: list[Any],
        /,
    ) -> None: ...
    def put(self, data: bytes, address: Any, /) -> bool: ...
    def put_many(
        self, datagrams: list[bytes], addresses: list[Any] | None, start: int, stop: int, /
    ) -> int: ...
