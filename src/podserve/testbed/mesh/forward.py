"""A byte-for-byte TCP forwarder: from a Unix socket or a loopback port to one TCP address (`kubectl port-forward`).

    Forwarder.unix(path, ("127.0.0.1", istiod_grpc))    # Envoy in the pod network reaches istiod on loopback
    Forwarder.tcp(("127.0.0.1", 8080), (gateway, 443))   # make mesh: localhost:8080 to the gateway in the namespace

Each accepted connection gets its own connection to the target and two threads copying until either side closes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path


class Forwarder:
    """Accept on a listening socket, connect each caller to `target`, copy both ways; `stop()` closes the listener."""

    def __init__(self, listener: socket.socket, target: tuple[str, int], name: str):
        self.listener, self.target, self.name = listener, target, name
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"forward-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def unix(cls, path: Path, target: tuple[str, int]) -> "Forwarder":
        path = Path(path)
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(16)
        return cls(listener, target, path.name)

    @classmethod
    def tcp(cls, address: tuple[str, int], target: tuple[str, int]) -> "Forwarder":
        listener = socket.create_server(address, reuse_port=False)
        return cls(listener, target, f"{address[0]}:{address[1]}")

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                caller, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                caller.close()
                continue
            with self._lock:
                self._open |= {caller, upstream}
            for source, sink in ((caller, upstream), (upstream, caller)):
                threading.Thread(target=self._copy, args=(source, sink), name=f"forward-{self.name}",
                                 daemon=True).start()

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side ended: end the other, so its copier ends too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            for sock in (source, sink):
                if sock in self._open:
                    self._open.discard(sock)
                    sock.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
