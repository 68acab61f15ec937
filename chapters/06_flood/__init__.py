"""Chapter 6: flood detection, and a stream that loses its framing is closed.

Builds on chapter 5; adds flood detection. A client that sends packets faster than
``Sock_FloodTimeInterval`` ms apart ``Sock_FloodKickCounter`` times in a row is kicked, and
a malformed header (length < 8 or > 29000) now closes the connection instead of being
skipped.
"""

TITLE = "Chapter 6 (06_flood)"
FEATURES = frozenset({"listen", "epoll", "pool", "sendqueue", "timers", "flood"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"flood.py"})
CHANGES = frozenset({"__init__.py", "README.md", "connection.py", "server.py"})
