"""Framing: a 9-byte header (length, type, id) followed by the payload.

The header is fixed binary rather than msgpack so the DATA path, the hot one, costs one
struct.pack and one slice per frame; control payloads are msgpack.
"""

import enum
import struct
from dataclasses import dataclass

import msgpack

from tether.protocol.errors import LocalProtocolError, ProtocolError

# The frame format and the message vocabulary (messages.py) together: bump on any change to
# either, so that mismatched ends fail their handshake with the version message.
# 2: the typed vocabulary (answers as maps; resolve, dns.query, fs.fstat, fs.rename,
# incoming.unsubscribe and incoming.list gone).
# 3: resumable sessions (ACK, RESUME, RESUMED; sequenced frames; HELLO carries info).
PROTOCOL_VERSION = 3
# Payloads above this are refused, so a decoder never buffers more than one such frame.
MAX_PAYLOAD = 256 * 1024
HEADER = struct.Struct("!IBI")  # length of (type + id + payload), type, stream/request id
_MIN_LENGTH = HEADER.size - 4


class FrameType(enum.IntEnum):
    """What a frame carries. HELLO is first on every connection and never changes shape."""

    HELLO = 1
    WELCOME = 2
    REJECT = 3
    REQUEST = 4
    RESPONSE = 5
    OPEN = 6
    ACCEPT = 7
    DATA = 8
    WINDOW = 9
    EOF = 10
    RESET = 11
    PING = 12
    PONG = 13
    GOAWAY = 14
    ACK = 15
    RESUME = 16
    RESUMED = 17


_TYPES = {int(t): t for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    type: FrameType
    id: int
    payload: bytes


def encode(ftype: FrameType, ident: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(len(payload) + _MIN_LENGTH, ftype, ident) + payload


def pack(obj: object) -> bytes:
    """msgpack a control payload."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack_map(payload: bytes) -> dict[str, object]:
    """Decode a control payload that must be a map with string keys."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"malformed control payload: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ProtocolError("control payload is not a map")
    return obj


class FrameDecoder:
    """Turns a byte stream into frames, holding at most one partial frame."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every complete frame before the first bad header, if any.

        At a bad header `error` is set (the caller raises it once it has handled the frames
        before it) and every later call returns no frame.
        """
        if self.error is not None:
            return []
        # Parse straight out of `data` when nothing is pending, so a whole frame costs one
        # copy (its payload); only a trailing partial frame is buffered.
        if self._buf:
            self._buf += data
            src: bytes | bytearray = self._buf
        else:
            src = data
        frames: list[Frame] = []
        pos = 0
        end = len(src)
        unpack_from = HEADER.unpack_from
        while end - pos >= HEADER.size:
            length, ftype, ident = unpack_from(src, pos)
            if length < _MIN_LENGTH or length - _MIN_LENGTH > MAX_PAYLOAD:
                return self._fail(frames, f"frame length {length} out of range")
            kind = _TYPES.get(ftype)
            if kind is None:
                return self._fail(frames, f"unknown frame type {ftype}")
            stop = pos + 4 + length
            if stop > end:
                break
            frames.append(Frame(kind, ident, bytes(src[pos + HEADER.size : stop])))
            pos = stop
        if src is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(data[pos:])
        return frames

    def _fail(self, frames: list[Frame], reason: str) -> list[Frame]:
        # The frames before a bad header still count (a REJECT or GOAWAY among them says why
        # the peer went wrong); nothing after it can be framed.
        self.error = ProtocolError(reason)
        self._buf = bytearray()
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held for a partial frame."""
        return len(self._buf)
