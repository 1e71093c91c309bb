# Rank FAIL_RANK exits with EXIT_CODE after FAIL_AFTER s (MODE=exit), raises (MODE=raise), writes a torch
# @record-style error.json then raises (MODE=record), or kills itself with SELF_SIG (MODE=selfkill).
# Other ranks sleep SLEEP s; IGNORE_TERM=1 makes them ignore SIGTERM. Ranks log to $DUMP_DIR/events.log.
import json
import os
import signal
import sys
import time
import traceback

d = os.environ["DUMP_DIR"]
rank = int(os.environ["RANK"])


def log(msg):
    with open(os.path.join(d, "events.log"), "a") as f:
        f.write(f"{time.time():.3f} rank{rank} pid{os.getpid()} {msg}\n")


def handler(signum, frame):
    log(f"got signal {signal.Signals(signum).name}")
    if os.environ.get("IGNORE_TERM") == "1" and signum == signal.SIGTERM:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
    signal.signal(s, handler)
log(f"start restart_count={os.environ.get('TORCHELASTIC_RESTART_COUNT')}")
print(f"rank{rank} started restart_count={os.environ.get('TORCHELASTIC_RESTART_COUNT')}", flush=True)
mode = os.environ.get("MODE", "exit")
if rank == int(os.environ.get("FAIL_RANK", "1")) and mode != "none":
    time.sleep(float(os.environ.get("FAIL_AFTER", "0.5")))
    if mode == "exit":
        print(f"rank{rank} exiting", file=sys.stderr, flush=True)
        sys.exit(int(os.environ.get("EXIT_CODE", "3")))
    if mode == "selfkill":
        sig = getattr(signal, os.environ.get("SELF_SIG", "SIGKILL"))
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    try:
        raise ValueError(f"boom from rank {rank}")
    except ValueError:
        tb = traceback.format_exc()
        if mode == "record":
            with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
                json.dump(
                    {
                        "message": {
                            "message": f"ValueError: boom from rank {rank}",
                            "extraInfo": {"py_callstack": tb, "timestamp": str(int(time.time()))},
                        }
                    },
                    f,
                )
        raise
end = time.time() + float(os.environ.get("SLEEP", "30"))
while time.time() < end:
    time.sleep(0.02)
log("finished sleeping normally")
