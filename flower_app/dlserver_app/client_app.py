"""ClientApp entry point (the code: dlserver_tools.flower.client_app)."""

from dlserver_tools.flower.client_app import app

__all__ = ["app"]
