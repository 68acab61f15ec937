"""Chapter 2: one thread, many clients, with a level-triggered epoll event loop.

Builds on chapter 1; adds the epoll event loop. Every socket is non-blocking and
registered with epoll; one thread waits for readiness and runs a handler per event:
accept for listening sockets, read or write for clients. A client that stalls no longer
stops anybody else.
"""

TITLE = "Chapter 2 (02_epoll)"
FEATURES = frozenset({"listen", "epoll"})

# Snapshot lineage (see GUIDE.md section 4): files new in this chapter, files changed from
# chapter 1; every other file is an identical copy.
ADDS = frozenset({"connection.py"})
CHANGES = frozenset({"__init__.py", "README.md", "server.py"})
