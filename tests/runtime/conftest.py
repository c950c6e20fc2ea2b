"""Fixtures that start real servers for the runtime tests."""

from __future__ import annotations

import pytest

from serving import Server


@pytest.fixture
def start_server(tmp_path):
    """Start a server with the given settings, wait until ready, stop it after the test."""
    servers: list[Server] = []

    def start(wait: bool = True, **settings) -> Server:
        server = Server(tmp_path / f"server-{len(servers)}.log", **settings)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    stop_all(servers)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """Like start_server, for a server every test of one module shares."""
    servers: list[Server] = []
    folder = tmp_path_factory.mktemp("module-server")

    def start(**settings) -> Server:
        server = Server(folder / f"server-{len(servers)}.log", **settings)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    stop_all(servers)


def stop_all(servers: list[Server]) -> None:
    """Stop each server, then fail the test whose server logged a fault of the runtime's own: a request can be
    answered well and still have hit a bug (a decode that outlived its answer once raised on the payload the answer
    had released, logged as an unexpected error and seen by no assertion)."""
    for server in servers:
        server.stop()
    faults = {server.log_path.name: server.runtime_faults() for server in servers}
    assert not any(faults.values()), f"the runtime logged faults of its own: {faults}"
