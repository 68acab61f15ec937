"""One pytest file per exercise, run by ``python -m tools.exercise check N.M``."""
