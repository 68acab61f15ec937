"""Exercises on the chapters: checks, solutions, and (git-ignored) the reader's copies.

See ``python -m tools.exercise --help`` and ``exercises/README.md``.
"""
