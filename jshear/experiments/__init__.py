"""Experiments over whole runs: `compare` (methods at equal tokens), `paired` (per-row paired
differences between finished runs) and `swap` (the 2x2 masks x weights swap)."""
