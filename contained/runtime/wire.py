"""The wire between a caller and the runner (or a container's PID 1): JSON plus descriptors.

Taught in notebook 06 (what ``%%container`` does underneath). A request is a length-prefixed
JSON object sent over a Unix socket together with open file descriptors (SCM_RIGHTS, the way
a shell hands a child its stdin and stdout): the cell's pipes travel to the process that runs
the container, so output streams straight from the container into the notebook. Replies are
JSON lines on the same socket: "started", then "exit" (or "error").
"""

import json
import socket
import struct
from array import array

MAX_REQUEST = 1 << 20
MAX_FDS = 16


def send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    """Send one request with its descriptors."""
    data = json.dumps(request).encode()
    sock.sendmsg([struct.pack("!I", len(data)), data],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])


def receive_request(sock: socket.socket) -> tuple[dict, list[int]] | None:
    """The next request and its descriptors, or None when the other side has gone."""
    fds = array("i")
    try:
        header, ancillary, _, _ = sock.recvmsg(4, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except ConnectionResetError:  # it left with something of ours unread
        return None
    if not header:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    (length,) = struct.unpack("!I", header)
    if length > MAX_REQUEST:
        raise ValueError(f"request of {length} bytes")
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return json.loads(data), list(fds)


def send_message_with_fds(sock: socket.socket, fds: list[int], **message) -> None:
    """One JSON line carrying descriptors (SCM_RIGHTS): a ``-t`` command's pty master."""
    sock.sendmsg([json.dumps(message).encode() + b"\n"],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])


def receive_messages(sock: socket.socket, size: int = 65536) -> tuple[bytes, list[int]]:
    """What the socket holds (part of a line, or several), and any descriptors that came
    with it; the caller takes them (they would be lost to a plain recv)."""
    fds = array("i")
    data, ancillary, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def send_message(sock: socket.socket | None, **message) -> None:
    """One JSON line; a caller that has gone away is not an error (it is cleaned up anyway)."""
    if sock is None:
        return
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass
