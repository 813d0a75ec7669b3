"""asv benchmarks of numadam; run from this folder: ``asv run``."""
