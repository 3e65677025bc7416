"""sd_notify: systemd-python's daemon.notify where installed, else the datagram to $NOTIFY_SOCKET by hand."""

from __future__ import annotations

import os
import socket
import time


def _send(message: str) -> bool:
    try:
        from systemd import daemon  # type: ignore[attr-defined]  # python3-systemd on the Pi (no stubs)
    except ImportError:
        daemon = None
    if daemon is not None:
        return bool(daemon.notify(message))
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    # Never block the frame loop on systemd: if its queue is full, this message is dropped (the next pet follows).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
        try:
            sock.connect(address)
            sock.send(message.encode())
        except (BlockingIOError, FileNotFoundError, ConnectionRefusedError):
            return False
    return True


class Notifier:
    """READY, WATCHDOG (rate-limited to half of systemd's WatchdogSec), STATUS and STOPPING."""

    def __init__(self):
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec and mine else None
        self._last_pet = float("-inf")

    def ready(self, status: str = "") -> None:
        _send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        _send(f"STATUS={status}")

    def pet(self) -> None:
        """Called from inside the frame loop, so that a hung loop stops the pets and trips systemd's watchdog."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_pet >= self.watchdog_interval:
            _send("WATCHDOG=1")
            self._last_pet = now

    def stopping(self) -> None:
        _send("STOPPING=1")

    def reloading(self) -> None:
        _send("RELOADING=1")
