"""Chapter 7: a master process forks worker processes, replaces a dead one, reloads.

Builds on chapter 6; adds the process model. The master reads the config, opens the
listening sockets, forks ``WorkerProcesses`` workers that each run chapter 6's server on
them, and never serves a client itself. A worker that dies is replaced; SIGHUP starts
workers on the re-read config and lets the old ones drain; SIGTERM and SIGINT stop every
worker after the replies it owes; SIGQUIT lets them serve their clients until they leave.
``stats()`` adds up every worker's, with a row per worker.
"""

TITLE = "Chapter 7 (07_processes)"
FEATURES = frozenset({"listen", "epoll", "pool", "sendqueue", "timers", "flood", "processes"})

# Snapshot lineage: the files new in this chapter and the files it changes; every other
# file is a byte-identical copy of the previous chapter's (python -m tools.chapters check).
ADDS = frozenset({"master.py"})
CHANGES = frozenset({"__init__.py", "README.md", "listening.py", "sendqueue.py", "server.py"})
