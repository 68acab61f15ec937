"""Chapter 4: worker threads run the logic, a semaphore-driven send thread writes the replies.

Builds on chapter 3; adds the worker pool and the send queue. The event loop only reads,
parses and hands complete packets to a pool of worker threads; the workers run the
(now expensive) logic and put replies on a send queue; a send thread woken by a semaphore
writes them, falling back to EPOLLOUT when the kernel buffer is full. A slow login no
longer stalls every other client, and a client that does not take its replies is read no
more until it does (backpressure), so what it costs the server stays bounded.
"""

TITLE = "Chapter 4 (04_sendqueue)"
FEATURES = frozenset({"listen", "epoll", "pool", "sendqueue"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"sendqueue.py", "workers.py"})
CHANGES = frozenset({"__init__.py", "README.md", "connection.py", "eventloop.py", "server.py"})
