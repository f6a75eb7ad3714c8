"""Root test configuration: the spec coverage gate (see ``tests/spec_plugin.py``)."""

from __future__ import annotations

import pytest
import spec_plugin


def pytest_addoption(parser: pytest.Parser) -> None:
    spec_plugin.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    spec_plugin.register_marker(config)
    if not config.pluginmanager.is_blocked(spec_plugin.PLUGIN_NAME):
        config.pluginmanager.register(spec_plugin.SpecPlugin(config), spec_plugin.PLUGIN_NAME)
