# Dumps the worker's environment and process facts as JSON, one file per rank, then sleeps SLEEP s.
import json
import os
import sys
import time

out = os.environ["DUMP_DIR"]
rank = os.environ.get("RANK", "norank")
restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "x")
info = {
    "argv": sys.argv,
    "orig_argv": getattr(sys, "orig_argv", None),
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pgid": os.getpgid(0),
    "sid": os.getsid(0),
    "cwd": os.getcwd(),
    "name": __name__,
    "stdout_isatty": sys.stdout.isatty(),
    "stderr_isatty": sys.stderr.isatty(),
    "env": dict(os.environ),
    # Under --run-path, the launcher's modules at the fork too.
    "modules": sorted(sys.modules),
}
with open(os.path.join(out, f"proc_rank{rank}_attempt{restart}.json"), "w") as f:
    json.dump(info, f, indent=1, sort_keys=True)
print(f"rank {rank} argv={sys.argv}", flush=True)
time.sleep(float(os.environ.get("SLEEP", "0")))
