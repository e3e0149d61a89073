# Runs INSIDE gdb (gdb -q -batch -nx -x bench/gdb_inside.py APP.hvt), driven by bench/gdb.py:
# connects to the stub at BENCH_ADDR (or, when it is empty, runs the native program with
# BENCH_ARGS under gdb itself), runs one measurement (BENCH_MODE) and writes a JSON object
# to BENCH_RESULT.
#   stepi      break tick, continue, BENCH_STEPS x stepi (Python loop), packets per step
#   memread    break tick, continue, dump binary memory of BENCH_DUMP bytes at BENCH_DUMP_AT
#   bp         break tick, continue, BENCH_HITS x continue
#   interrupt  continue (bench/gdb.py sends SIGINT to gdb), stop time and place
import json
import os
import time

import gdb

E = os.environ
MODE = E["BENCH_MODE"]
res = {"mode": MODE, "ok": False}
stops = []
gdb.events.stop.connect(lambda ev: stops.append((time.time(), ev)))


def run(cmd):
    return gdb.execute(cmd, to_string=True)


def frame_name():
    try:
        return gdb.selected_frame().name()
    except gdb.error:
        return None


def cpu_now():
    """(gdb's CPU seconds, the stub's: user + system, of BENCH_PID, or None)."""
    t = os.times()
    stub = None
    pid = E.get("BENCH_PID")
    if pid:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            stub = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return t.user + t.system, stub


def cpu_per_op(c0, n):
    """us of CPU per operation, gdb's and the stub's, since c0 = cpu_now()."""
    c1 = cpu_now()
    out = {"gdb_cpu_us": (c1[0] - c0[0]) / n * 1e6}
    if c0[1] is not None and c1[1] is not None:
        out["stub_cpu_us"] = (c1[1] - c0[1]) / n * 1e6
    return out


def log_marker(tag):
    # A packet the remote log shows, to count the packets of one phase.
    try:
        run(f"monitor help {tag}")
    except gdb.error:
        pass


def main():
    log = E.get("BENCH_REMOTELOG")
    if log:
        run(f"set remotelogfile {log}")
    native = not E.get("BENCH_ADDR")
    if not native:
        run(f"target remote {E['BENCH_ADDR']}")
    if MODE == "interrupt":
        with open(E["BENCH_READY"], "w") as f:
            f.write("ready\n")
        run("continue")
        t, ev = stops[-1]
        res.update(t_stop=t, func=frame_name(),
                   signal=getattr(ev, "stop_signal", None))
        res["ok"] = res["signal"] == "SIGINT"
        return
    run("break tick")
    run(f"run {E.get('BENCH_ARGS', '')}" if native else "continue")
    if frame_name() != "tick":
        raise RuntimeError(f"did not stop in tick but in {frame_name()}")
    if MODE == "stepi":
        n = int(E.get("BENCH_STEPS", "10000"))
        run("delete")
        pc0 = int(gdb.parse_and_eval("$pc"))
        log_marker("start")
        c0 = cpu_now()
        t0 = time.perf_counter()
        for _ in range(n):
            gdb.execute("stepi", to_string=True)
        dt = time.perf_counter() - t0
        res.update(cpu_per_op(c0, n))
        log_marker("end")
        res.update(steps=n, seconds=dt, per_s=n / dt, moved=int(gdb.parse_and_eval("$pc")) != pc0)
        res["ok"] = res["moved"]
    elif MODE == "memread":
        size = int(E.get("BENCH_DUMP", str(16 << 20)), 0)
        at = int(E.get("BENCH_DUMP_AT", "0x100000"), 0)
        path = E["BENCH_DUMP_FILE"]
        t0 = time.perf_counter()
        run(f"dump binary memory {path} {at:#x} {at + size:#x}")
        dt = time.perf_counter() - t0
        with open(path, "rb") as f:
            f.seek(int(gdb.parse_and_eval("(unsigned long)&tick_count")) - at)
            tc = int.from_bytes(f.read(8), "little")
        res.update(bytes=os.path.getsize(path), seconds=dt, mib_per_s=size / dt / (1 << 20),
                   check=tc == int(gdb.parse_and_eval("tick_count")))
        res["ok"] = res["bytes"] == size and res["check"]
    elif MODE == "bp":
        n = int(E.get("BENCH_HITS", "1000"))
        log_marker("start")
        c0 = cpu_now()
        t0 = time.perf_counter()
        for _ in range(n):
            gdb.execute("continue", to_string=True)
        dt = time.perf_counter() - t0
        res.update(cpu_per_op(c0, n))
        log_marker("end")
        tc = int(gdb.parse_and_eval("tick_count"))
        res.update(hits=n, seconds=dt, per_s=n / dt, tick_count=tc)
        res["ok"] = tc == n and frame_name() == "tick"
    run("kill")


try:
    main()
except Exception as e:          # report, do not hang the harness
    res["error"] = f"{type(e).__name__}: {e}"
with open(E["BENCH_RESULT"], "w") as f:
    json.dump(res, f)
