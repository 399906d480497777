"""Server processes for ``rekindle serve --workers N``: each listens on its own ``SO_REUSEPORT`` socket.

uvicorn's own workers share one listening socket, and the worker that wakes first accepts every connection
waiting (uvloop accepts until the queue is empty). A client that opens its connection pool at once therefore lands
on one worker while the others idle: the event benchmark's eight connections all went to one of two workers. With a
socket per worker the kernel spreads new connections across the workers by a hash of their addresses.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from typing import Any

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PortInUseError(RuntimeError):
    pass


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _serve(host: str, port: int, uvicorn_options: dict[str, Any], ready: EventType) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                ready.set()

    sock = listening_socket(host, port, reuse_port=True)
    Server(uvicorn.Config(**uvicorn_options)).run(sockets=[sock])


class Workers:
    """Starts ``count`` server processes on host:port, replaces one that dies after it served, and stops them all on
    SIGINT/SIGTERM."""

    def __init__(self, host: str, port: int, count: int, uvicorn_options: dict[str, Any]):
        self.host, self.port, self.count = host, port, count
        self.uvicorn_options = uvicorn_options
        self._context = multiprocessing.get_context("spawn")
        self._stop = threading.Event()

    def run(self) -> int:
        # Without SO_REUSEPORT, so that a port another server (even another `rekindle serve`) listens on is refused
        # here instead of being shared with it.
        listening_socket(self.host, self.port, reuse_port=False).close()
        previous = {signum: signal.signal(signum, lambda *_: self._stop.set()) for signum in STOP_SIGNALS}
        try:
            return self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _supervise(self) -> int:
        processes = [self._start() for _ in range(self.count)]
        exit_code = 0
        while not self._stop.wait(0.5):
            for i, (process, ready) in enumerate(processes):
                if process.is_alive():
                    continue
                if not ready.is_set():
                    # It would only fail again (a warehouse that cannot be reached, a broken installation).
                    log.error("worker %s exited with %s before serving; stopping", process.pid, process.exitcode)
                    exit_code = process.exitcode or 1
                    self._stop.set()
                    break
                log.warning("worker %s exited with %s; starting another", process.pid, process.exitcode)
                processes[i] = self._start()
        for process, _ in processes:
            if process.is_alive():
                process.terminate()  # uvicorn's graceful shutdown
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process, _ in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        return exit_code

    def _start(self) -> tuple[BaseProcess, EventType]:
        """A new worker, and the event it sets once it serves."""
        ready = self._context.Event()
        process = self._context.Process(target=_serve, args=(self.host, self.port, self.uvicorn_options, ready))
        process.start()
        return process, ready
