"""Planning a training run: scaling laws, compute-optimal sizes, architectures, fits and sweeps."""
