"""Keeping the media before the provider's links expire: ``MUSICCALLBACK_ARCHIVE``
(docs/archive.md).

- :mod:`.media`: which files an event carries, and their names;
- :mod:`.fetch`: fetching a link without letting it reach inside the network;
- :mod:`.copies`: the copies, as deliveries of their own, off the request path.

Nothing is imported here: the families import :mod:`.media`, and :mod:`.copies` imports them.
"""
