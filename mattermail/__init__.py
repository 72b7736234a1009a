"""mattermail: file every email against the right matter and person, at the SMTP layer."""

from mattermail.version import __version__

__all__ = ["__version__"]
