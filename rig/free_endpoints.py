"""Loopback endpoints on free ports: for demos, benchmarks and tests that run a session beside others."""

from __future__ import annotations

import socket

from rig.settings import NetworkSettings

ENDPOINT_NAMES: tuple[str, ...] = tuple(
    name for name, field in NetworkSettings.model_fields.items() if field.annotation is str
)
"""The `network` settings that are endpoints (every one but `bind_loopback_only`)."""


def free_loopback_endpoints(n: int) -> list[str]:
    """`n` distinct tcp://127.0.0.1 endpoints on ports that are free now (held open together, so no two
    are the same; another process may still take one before it is bound)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_loopback_endpoint() -> str:
    return free_loopback_endpoints(1)[0]


def free_network() -> dict[str, str]:
    """Every `network` endpoint on its own free loopback port, keyed by setting name."""
    return dict(zip(ENDPOINT_NAMES, free_loopback_endpoints(len(ENDPOINT_NAMES)), strict=True))


def free_network_overrides() -> dict[str, str]:
    """`free_network()` as dotted settings overrides (`network.events_pub`, ...)."""
    return {f"network.{name}": endpoint for name, endpoint in free_network().items()}
