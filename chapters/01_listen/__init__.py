"""Chapter 1: listening sockets, and a server that serves one client at a time.

Opens the configured listening sockets the way the original does, then accepts a client
and serves it with plain blocking I/O until it leaves, and only then accepts the next one.
A second client therefore hangs: that is the problem chapter 2 solves.
"""

TITLE = "Chapter 1 (01_listen)"
FEATURES = frozenset({"listen"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"__init__.py", "__main__.py", "README.md", "listening.py", "server.py"})
CHANGES: frozenset[str] = frozenset()
