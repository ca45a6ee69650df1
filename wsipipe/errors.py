"""The wsipipe error hierarchy.

Every error carries a one-line message that names the file (or option), the offending value
and what to do about it. The CLI prints ``str(err)`` and nothing else for these errors, so
messages must stand on their own.
"""

from __future__ import annotations


class WsipipeError(Exception):
    """Base class of all errors wsipipe raises on purpose (bad input, not bugs)."""


class ConfigError(WsipipeError):
    """A configuration value (CLI option, YAML field, CSV column) is invalid."""


class SlideError(WsipipeError):
    """A slide cannot be used."""


class SlideOpenError(SlideError):
    """No reader could open the slide (corrupt, truncated or unsupported file)."""


class MissingMppError(SlideError):
    """The slide records no microns-per-pixel and no override was given."""


class NoTissueError(SlideError):
    """Tissue segmentation (or the given tissue GeoJSON) found no tissue tiles."""


class StoreError(WsipipeError):
    """A patch store is missing, incomplete or unreadable."""


class LockedError(WsipipeError):
    """Another live process holds the lock for this output (``holder_pid``, when known)."""

    def __init__(self, message: str, holder_pid: int | None = None) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid


class NoSpaceError(WsipipeError):
    """An output cannot be written: its file system is full (or over quota)."""

    path: str | None = None  # the file that was being written, when known


class EncoderWeightsError(ConfigError):
    """Pretrained encoder weights cannot be found or do not fit the encoder's architecture."""


def warn(message: str) -> None:
    """A one-line warning on stderr (``warning: <message>``): something the user should know
    that does not stop the run (a setting that looks wrong, a fallback taken)."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)
