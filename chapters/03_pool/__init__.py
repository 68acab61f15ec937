"""Chapter 3: a connection pool whose objects are reused safely.

Builds on chapter 2; adds the connection pool. Connection objects are created up front and
reused; each carries a generation number, bumped when it is handed out and when it is
retired, so anything that refers to a connection later can tell "still the same client"
from "closed, maybe reused". Closed connections wait in a recycle queue before reuse; the
pool also enforces the online-user limit and the connect/disconnect storm guard, and the
server pauses accepting when it runs out of descriptors.
"""

TITLE = "Chapter 3 (03_pool)"
FEATURES = frozenset({"listen", "epoll", "pool"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"pool.py"})
CHANGES = frozenset({"__init__.py", "README.md", "connection.py", "eventloop.py", "server.py"})
