"""Chapter 2: one thread, many clients, with a level-triggered epoll event loop.

Builds on chapter 1; adds the epoll event loop. Every socket is non-blocking and
registered with epoll; one thread waits for readiness and runs a handler per event:
accept for listening sockets, read or write for clients. A client that stalls no longer
stops anybody else.
"""

TITLE = "Chapter 2 (02_epoll)"
FEATURES = frozenset({"listen", "epoll"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"connection.py", "eventloop.py"})
CHANGES = frozenset({"__init__.py", "README.md", "server.py"})
