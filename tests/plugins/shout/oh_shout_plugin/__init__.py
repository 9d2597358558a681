"""A third-party openhands-rt plugin package, used by the tests through its entry points."""

from oh_shout_plugin.plugins import TRACE_FILE, BrokenPlugin, HangingPlugin, ShoutPlugin

__all__ = ["TRACE_FILE", "BrokenPlugin", "HangingPlugin", "ShoutPlugin"]
