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
    for server in servers:
        server.stop()


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
    for server in servers:
        server.stop()
