"""Benchmarks of idnode: ``make bench`` runs ``python -m benchmarks.run``."""
