"""The runtime bundle: the server, its interpreter and a static bash, for any Linux image."""

from openhands_rt.bundle.errors import BundleError
from openhands_rt.bundle.layout import BUNDLE_MOUNT, Manifest, server_command
from openhands_rt.bundle.make import Bundle, find_static_bash, make_bundle
from openhands_rt.bundle.markers import MarkerError

__all__ = [
    "BUNDLE_MOUNT",
    "Bundle",
    "BundleError",
    "Manifest",
    "MarkerError",
    "find_static_bash",
    "make_bundle",
    "server_command",
]
