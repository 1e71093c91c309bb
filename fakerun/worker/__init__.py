"""The per-rank worker process: environment, process title, the simulated job."""
