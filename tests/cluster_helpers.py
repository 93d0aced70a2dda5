"""Loopback Ray clusters for tests: free ports outside Ray's worker range, and forgetting a stopped cluster's address."""
from __future__ import annotations

import tempfile
from pathlib import Path


def free_ports(n: int, low: int = 20000, high: int = 29999) -> list[int]:
    """``n`` distinct ports free now, outside Ray's default worker port range (10002–19999)."""
    import socket

    ports: list[int] = []
    for port in range(low, high):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError("no free ports")


def forget_cluster_address(address: str) -> None:
    """Remove the address file ``ray start`` wrote (as ``ray stop`` does) when it names this test's cluster."""
    marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if marker.read_text().strip() == address:
            marker.unlink()
    except OSError:
        pass
