"""Pure, deterministic physics of the simulated job: (spec, seed, rank, step) -> numbers."""
