"""Chapter 5: a heartbeat timer queue that reaps silent and stalled connections.

Builds on chapter 4; adds the heartbeat timers. Every connection gets an entry in a
time-ordered queue; a monitor thread takes the expired entries, re-arms them, and kicks a
connection that has neither pinged nor taken its waiting replies for too long (or, with
``Sock_TimeOutKick = 1``, every connection at its first check). An idle socket, or one
that stopped reading, is no longer held forever.
"""

TITLE = "Chapter 5 (05_timers)"
FEATURES = frozenset({"listen", "epoll", "pool", "sendqueue", "timers"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"timers.py"})
CHANGES = frozenset({"__init__.py", "README.md", "connection.py", "sendqueue.py", "server.py"})
