"""Fixtures of the server tests: the bundled digits model exported once, and servers on real local ports."""

from __future__ import annotations

import pytest
from serve_helpers import MODEL, LiveServer


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory):
    """models/digits exported as `make engines` exports it (batch 10: what a UNet run may take)."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    out = tmp_path_factory.mktemp("serve") / "digits"
    export_package(load_source(MODEL), out, ExportOptions(batch=10, check=False))
    return out


@pytest.fixture
def live_server():
    servers = []

    def start(models, config=None) -> LiveServer:
        server = LiveServer(models, config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
