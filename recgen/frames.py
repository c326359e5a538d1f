"""Length-prefixed frames on a byte stream: how the gateway and a local worker exchange packed
rank batches on the worker's rank socket (worker.proto RankSocket), without gRPC per batch.

A frame is a 4-byte little-endian length, then that many bytes (one serialized protobuf
message). `frame` makes one; `FrameReader.feed` takes whatever a socket read returned and gives
back the whole frames in it, keeping a partial one for the next read.

What it does not do: know the messages, or own a socket (server/rank_socket.py and
worker/rank_socket.py do).
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<I")
MAX_FRAME = 256 << 20  # a frame this long is a broken stream, not a batch


class FrameError(ValueError):
    """The stream is not frames (a length past MAX_FRAME): close it."""


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by `data`, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while size - pos >= HEADER.size:
            (n,) = HEADER.unpack_from(buf, pos)
            if n > MAX_FRAME:
                raise FrameError(f"frame of {n} bytes")
            end = pos + HEADER.size + n
            if end > size:
                break
            out.append(bytes(buf[pos + HEADER.size : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out
