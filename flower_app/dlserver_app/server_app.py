"""ServerApp entry point (the code: dlserver_tools.flower.server_app)."""

from dlserver_tools.flower.server_app import app

__all__ = ["app"]
