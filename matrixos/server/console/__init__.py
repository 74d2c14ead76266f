"""The web console served by ``matrixos serve`` at ``/`` (see docs/console.md)."""

from matrixos.server.console.console import mount_console as mount_console

__all__ = ["mount_console"]
