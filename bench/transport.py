#!/usr/bin/env python3
"""bench/transport.py: what one gdb<->stub packet round trip costs on this host, bare.

A 1-byte ping-pong between two processes (prints, asserts nothing), N round trips:
  socketpair, one CPU     both pinned to CPU 0: a wake-up is a context switch
  socketpair, two CPUs    pinned to CPUs 0 and 1: a wake-up crosses CPUs (on nested
                          KVM, an IPI and the wake-up of a halted vCPU)
  TCP loopback, two CPUs  the same over 127.0.0.1 with TCP_NODELAY (gdb's transport)
  TCP loopback, unpinned  where the scheduler puts them
A stepi costs gdb three round trips (docs/gdb.md, "Speed"); this is their floor.

usage: bench/transport.py [-n 5000] [--rounds 5]
"""

import argparse
import os
import socket
import statistics
import time


def pair(kind):
    if kind == "unix":
        return socket.socketpair()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    b = socket.create_connection(lst.getsockname())
    a, _ = lst.accept()
    lst.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def round_trip_us(kind, cpus, n):
    a, b = pair(kind)
    pid = os.fork()
    if pid == 0:
        try:
            if cpus:
                os.sched_setaffinity(0, {cpus[0]})
            for _ in range(n):
                a.recv(64)
                a.send(b"y")
        finally:
            os._exit(0)
    a.close()
    home = os.sched_getaffinity(0)
    try:
        if cpus:
            os.sched_setaffinity(0, {cpus[1]})
        t = time.perf_counter()
        for _ in range(n):
            b.send(b"x")
            b.recv(64)
        return (time.perf_counter() - t) / n * 1e6
    finally:
        os.sched_setaffinity(0, home)
        b.close()
        os.waitpid(pid, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    cases = [("socketpair, one CPU", "unix", (cpus[0], cpus[0]))]
    if len(cpus) > 1:
        cases += [("socketpair, two CPUs", "unix", (cpus[0], cpus[1])),
                  ("TCP loopback, two CPUs", "tcp", (cpus[0], cpus[1]))]
    cases.append(("TCP loopback, unpinned", "tcp", None))
    res = {c[0]: [] for c in cases}
    for _ in range(a.rounds):                  # alternating: this host's timings drift
        for label, kind, pin in cases:
            res[label].append(round_trip_us(kind, pin, a.n))
    print(f"1-byte round trips between two processes, {a.n} per round, "
          f"median of {a.rounds} rounds (min-max):")
    for label, _, _ in cases:
        v = res[label]
        print(f"  {label:24s} {statistics.median(v):6.1f} us  ({min(v):.1f}-{max(v):.1f})")


if __name__ == "__main__":
    main()
