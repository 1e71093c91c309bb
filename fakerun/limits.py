"""fakerun's documented caps on counts and values: wide enough for every real job, and no wider."""

from __future__ import annotations

# The caps keep the largest real jobs legal (100k+ GPUs: 12,500+ nodes of 8; 10M-token contexts; 16M-token
# batches) while refusing values that would only overflow a float, an int64 or the process table.

MAX_NNODES = 65_536
MAX_NPROC_PER_NODE = 4_096  # GPUs per node, or CPU workers of `--nproc-per-node cpu` on a large host
MAX_RESTARTS = 1_000_000
MAX_SECONDS_OPTION = 86_400.0  # --monitor-interval, --shutdown-timeout, TORCH_ELASTIC_SHUTDOWN_TIMEOUT

MAX_STEPS = 10**12  # steps of a run: --fake-max-steps, --fake-start-step, a preset's or a script's total
MAX_SEED = 2**64 - 1  # the simulation's seeds are 64-bit (splitmix64)
MIN_SPEED = 1e-3  # --fake-speed: a thousand times slower than real time ...
MAX_SPEED = 1e9  # ... to a billion times faster (beyond that every wait is already zero)
MAX_SIM_SECONDS = 1e9  # --fake-max-time: about 31 years of simulated training
MAX_WALL_STEP_S = 86_400.0  # a step, evaluation or checkpoint paces for at most a day of wall time
MAX_EPOCHS = 1e6

MAX_FILE_BYTES = 1 << 20  # a --fake-config, preset, torchtitan or DeepSpeed file
MAX_TOML_DEPTH = 32  # tables and arrays nested in one of those files
