"""A minimal, bounded QMP client (QEMU Machine Protocol over a unix socket), stdlib only.

QMP sends one JSON object per line: a greeting, then for each command either ``{"return": …}`` or
``{"error": …}``, with asynchronous ``{"event": …}`` objects interleaved anywhere. Every wait here has
a deadline so a wedged QEMU cannot hang a capture.
"""

from __future__ import annotations

import json
import os
import socket
import time
from types import TracebackType
from typing import Any


class QmpError(Exception):
    """QMP connection failed, timed out, or a command returned an error."""


class Qmp:
    def __init__(self, sock_path: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buf = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock.connect(sock_path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                # QEMU creates the socket a moment after it starts.
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise QmpError(f"cannot connect to QMP socket {sock_path}: {e}") from e
                time.sleep(0.05)
        self.greeting = self._read_message(time.monotonic() + timeout)
        if "QMP" not in self.greeting:
            raise QmpError(f"unexpected QMP greeting: {self.greeting}")
        self.command("qmp_capabilities")

    def _read_message(self, deadline: float) -> dict[str, Any]:
        # Scan only what arrived since the last look: replies such as 'info tlb' run to megabytes.
        nl = self._buf.find(b"\n")
        while nl < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("timed out waiting for QMP")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError as e:
                raise QmpError("timed out waiting for QMP") from e
            if not chunk:
                raise QmpError("QMP connection closed by QEMU")
            start = len(self._buf)
            self._buf += chunk
            nl = self._buf.find(b"\n", start)
        line = bytes(self._buf[:nl])
        del self._buf[:nl + 1]
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as e:
            raise QmpError(f"bad QMP message {line[:200]!r}") from e
        if not isinstance(msg, dict):
            raise QmpError(f"bad QMP message {line[:200]!r}")
        return msg

    def command(self, name: str, timeout: float | None = None, **arguments: Any) -> Any:
        req: dict[str, Any] = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(f"{name}: {err.get('class', '?')}: {err.get('desc', err)}")
            if "return" in msg:
                return msg["return"]

    def hmp(self, command_line: str, timeout: float | None = None) -> str:
        """Run a human-monitor command; the reply text keeps QEMU's ``\\r\\n`` line endings."""
        reply = self.command("human-monitor-command", timeout=timeout, **{"command-line": command_line})
        return str(reply)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def wait_for_path(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
