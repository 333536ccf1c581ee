"""The reload seam: what every piece a reload reaches implements."""

from __future__ import annotations

from zope.interface import Interface


class IReloadable(Interface):
    """A piece whose settings a reload (``pushsvc-admin reload``, SIGHUP) changes."""

    def configure(settings):
        """Use ``settings`` (a ``config.Settings``) from now on, keeping every
        connection and session; what only a restart changes is left as it is."""
