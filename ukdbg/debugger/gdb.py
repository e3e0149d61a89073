"""ukdbg/debugger/gdb.py: `--gdb [HOST:]PORT|unix:PATH`, `--gdb-wait`, `--gdb-on-crash`.

The vCPU thread serves gdb; there are no extra threads. The listening socket is an
events async source, so a client may attach at any time: its arrival ends KVM_RUN (or
a POLL's wait) and loop.run returns an Attach stop, whose driver (`drive`) reports where
the guest is and serves the session. While the guest runs under `continue`, the
session's socket is an async source too: a Ctrl-C byte ends KVM_RUN through SIGIO. While
stopped, reads block in events.wait, so signals to the monitor are still honoured.
"""

import _signal
import _thread
import fcntl
import os
import select
import signal
import socket
import sys
import time

from ..errors import UkdbgError
from ..gdbstub.server import GdbServer, Outcome, SessionEnded, is_terminal
from ..gdbstub.transport import RECV_CHUNK, Listener, send_all
from ..target import Crashed, Exited, Interrupted, Killed, Stepped
from ..tender import flight, loop


def _warn(msg: str) -> None:
    sys.stderr.write(f"ukdbg: {msg}\n")
    sys.stderr.flush()


def _log(m, kind, **fields):
    if getattr(m, "log", None) is not None:
        try:
            from ..tender.modules.log import log_event
        except ImportError:
            return
        log_event(m, kind, **fields)


class Attach(Interrupted):
    """loop.run's answer to a new gdb connection; `handoff` hands the machine to the
    gdb driver (ukdbg/run.py drive)."""
    __slots__ = ("handoff",)

    def __init__(self):
        self.handoff = drive


# Spin this long for a client's next packet before sleeping (0 on a single CPU, where
# the spin would only delay the client). gdb's next packet comes within 0.25 ms 92% of
# the time in a loop of breakpoint hits, within 0.4 ms 99% (bench/gdb.py bp): each
# one that comes after the spin costs a wake-up, 0.1-0.4 ms here. 1 ms, not 0.25:
# 4-7% more breakpoint hits a second (8 alternating runs), stepi within the noise.
SPIN = 0.001 if len(os.sched_getaffinity(0)) > 1 else 0.0
# Bounds on what a client can make the monitor hold or wait for (issue 9). gdb waits
# for each reply (its largest request or reply is ~128 KiB), so only a client that
# stops reading ever reaches them.
OUT_MAX = 1 << 20       # unsent reply bytes; beyond, a write waits for the client
IN_MAX = 1 << 20        # received, unanswered request bytes; beyond, the client is dropped
STALL = 5.0             # seconds a client may leave replies unread before it is dropped
LOOK_EVERY = 32         # writes between two looks at signals in a long run of packets


class EventsChannel:
    """A session's bytes on the vCPU thread (see the module docstring).

    Waiting for the next packet is the hot path of stepping (three packets a step), so
    it is events.wait() cut to what a stopped session needs: the monitor's signals
    stay honoured (unblocked from the stop to the next resume, reported through a
    wakeup pipe installed for the whole session), the other async sources are polled
    too and, when one is readable or a signal came, all is handed to events.service."""

    def __init__(self, m, sock):
        self.m = m
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.eof = False
        self._running = False
        self.stepping = False         # set by the server before `running`
        self.ctrl_c = False
        self._poll = None
        self._polled = None
        m.events.add_source(self.fd, self._readable)
        self._fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        self._async(False)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = None
        self._unblocked = False
        self._fast = SPIN > 0             # the client answers within SPIN (see _spin)
        self.out = bytearray()            # replies the client has not taken yet
        self._since = 0.0                 # when `out` last shrank (or became non-empty)
        self._writes = 0
        self.dropped = None               # why the stub dropped the client, if it did
        self.ending = False               # the session is ending: no more waiting
        self._reading = False             # inside read(): events may drain the socket
        if m.events.armed:
            self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _unblock(self, on: bool) -> None:
        """Signals reach their (no-op) handlers, hence the wakeup pipe, while stopped;
        they are blocked again before the guest runs (events.py)."""
        if on != self._unblocked and self.m.events.armed:
            # _signal's own function: signal.pthread_sigmask converts the old mask
            # to a set of enums, at every resume and stop.
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK if on else _signal.SIG_BLOCK,
                                    self.m.events.blocked)
            self._unblocked = on

    def _async(self, on: bool) -> None:
        # SIGIO only while the guest runs free: when stopped the socket is polled, and
        # a single step ends by itself (a Ctrl-C during one waits for the next packet).
        fl = (self._fl | os.O_ASYNC) if on else (self._fl & ~os.O_ASYNC)
        if fl != self._fl:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fl)
            self._fl = fl

    @property
    def running(self) -> bool:
        return self._running

    @running.setter
    def running(self, on: bool) -> None:
        """Set by the server around target.resume()."""
        if on == self._running:
            return
        self._running = on
        if on:
            self._unblock(False)
        else:
            self._fast = SPIN > 0         # a stop reply is followed by gdb's questions
        self._async(on and not self.stepping)
        if on:
            if not self.stepping:
                self._drain()             # a Ctrl-C that came before O_ASYNC was set
            if self.ctrl_c or self.eof:
                self.m.events.post(lambda m: Interrupted())

    def _drain(self):
        if len(self.buf) >= IN_MAX:
            # Only a client that keeps sending while nothing is consumed (the guest
            # runs) gets here: it is dropped rather than buffered without bound.
            self._drop(f"it sent over {IN_MAX >> 20} MiB of requests without reading "
                       "the replies", raise_=False)
            return
        while not self.eof and len(self.buf) < IN_MAX:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            if self._running and b"\x03" in data:
                self.ctrl_c = True
                data = data.replace(b"\x03", b"")
            self.buf += data
            if len(data) < RECV_CHUNK:
                return                    # most likely all there is; poll tells if not

    def _readable(self, m):
        if not self._running and not self._reading:
            return None                   # a stopped session reads in read(), not here:
                                          # while it is busy, TCP holds the client back
        self._drain()
        if self._running and (self.ctrl_c or self.eof):
            flight.log(m, "gdb", "interrupt" if self.ctrl_c else "disconnect")
            return Interrupted()
        return None

    def read(self) -> bytes:
        self._reading = True
        try:
            return self._read()
        finally:
            self._reading = False

    def _read(self) -> bytes:
        ev = self.m.events
        while not self.buf and not self.eof:
            if self.out:
                self._flush()
                if self.out:              # the client is behind: wait for either way
                    self._wait_io(True)
                    continue
            if not ev.armed or ev.pending:
                self._slow_wait()
                continue
            srcs = tuple(ev.sources)
            if self._polled != srcs:
                self._poll = select.poll()
                for fd in (self._wake_r,) + srcs:
                    self._poll.register(fd, select.POLLIN)
                self._polled = srcs
            self._unblock(True)
            ready = self._spin() if self._fast else None
            if not ready:
                t0 = time.perf_counter()
                ready = self._poll.poll()
                self._fast = time.perf_counter() - t0 < SPIN
            if len(ready) == 1 and ready[0][0] == self.fd:
                self._drain()
                continue
            sigs = []
            try:
                sigs = list(os.read(self._wake_r, 4096))
            except BlockingIOError:
                pass
            if sigs:
                self._check(ev.service(sigs))
            if any(fd not in (self._wake_r, self.fd) for fd, _ in ready):
                self._slow_wait(0)
            elif any(fd == self.fd for fd, _ in ready):
                self._drain()
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def _spin(self):
        """poll(0) for up to SPIN seconds: gdb sends its next packet within 0.1-0.4 ms,
        and on a host whose idle vCPUs halt (nested KVM) a sleeping monitor costs gdb
        a cross-CPU wake-up per packet, a third of a step's time. Bounded and
        adaptive (see read()): an idle gdb costs one spin, then poll() blocks.
        Between two polls the CPU goes to any task waiting for it: when gdb shares
        the monitor's CPU (a loaded host), a spin that kept it would hold gdb's
        packet back (650-790 us a stepi against 410-420 yielding, same host)."""
        end = time.perf_counter() + SPIN
        poll = self._poll.poll
        clock, give = time.perf_counter, os.sched_yield
        while True:
            ready = poll(0)
            if ready or clock() > end:
                return ready
            give()

    def _slow_wait(self, timeout=None):
        self._unblock(False)                                 # as events.wait expects
        _ready, stop = self.m.events.wait((), timeout)     # drains us (a source)
        self._check(stop)

    def _check(self, stop):
        if isinstance(stop, (Killed, Exited, Crashed)):
            self.ending = True            # the exit reply is sent without waiting
            raise SessionEnded(stop)

    # --- output: never blocks the monitor (issue 9) -------------------------------------------
    def write(self, data) -> None:
        """Queue data for the client and send what its socket takes now. Only when
        more than OUT_MAX bytes wait does this wait, serving signals and the other
        sources meanwhile; a client that takes nothing for STALL s is dropped."""
        if self.dropped:
            raise ConnectionError(self.dropped)
        if self.out:
            self.out += data
            self._flush()
        else:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                raise ConnectionError(str(e)) from None
            if n < len(data):
                if self.ending:
                    return                # best effort: the monitor is going away
                self.out += memoryview(data)[n:]
                self._since = time.monotonic()
        self._writes += 1
        if self._writes >= LOOK_EVERY:
            # A long run of pipelined packets must not hold off a SIGTERM or a
            # control request (both arrive through the wakeup pipe while stopped).
            self._writes = 0
            self._look()
        while len(self.out) > OUT_MAX and not self.ending:
            self._wait_io(False)

    def _flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.out.clear()
            raise ConnectionError(str(e)) from None
        if n:
            del self.out[:n]
            self._since = time.monotonic()

    def _look(self) -> None:
        if not self.m.events.armed or self.ending:
            return
        try:
            sigs = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        self._check(self.m.events.service(list(sigs)))

    def _wait_io(self, readable: bool) -> None:
        """One wait until the client takes output (or sends, if `readable`), a signal
        or another source: the slow path of a client that is not reading."""
        ev = self.m.events
        left = self._since + STALL - time.monotonic()
        if left <= 0:
            self._drop(f"it left {len(self.out)} bytes of replies unread for "
                       f"{STALL:g} s")
        p = select.poll()
        p.register(self.fd, select.POLLOUT | (select.POLLIN if readable else 0))
        others = [fd for fd in ev.sources if fd != self.fd]
        for fd in others:
            p.register(fd, select.POLLIN)
        if ev.armed:
            p.register(self._wake_r, select.POLLIN)
            self._unblock(True)
        ready = p.poll(int(left * 1000) + 1)
        other = False
        for fd, bits in ready:
            if fd == self.fd:
                if bits & select.POLLOUT:
                    self._flush()
                if bits & (select.POLLHUP | select.POLLERR):
                    self._flush()         # raises if the connection is gone
                if readable and bits & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    self._drain()
            elif fd != self._wake_r:
                other = True
        self._look()
        if other:
            self._slow_wait(0)
        if self.dropped:
            raise ConnectionError(self.dropped)

    def _drop(self, why: str, raise_=True) -> None:
        """Give up on the client (the guest and the monitor carry on)."""
        if not self.dropped:
            self.dropped = f"gdb: dropped the client: {why}"
            _warn(self.dropped)
        self.eof = True
        self.buf.clear()
        self.out.clear()
        if raise_:
            raise ConnectionError(self.dropped)

    def close(self) -> None:
        if self.out and not self.dropped:
            try:
                self.sock.send(self.out)  # a last reply (to `D`), if it fits now
            except OSError:
                pass
        self._unblock(False)
        try:                              # signals that came since the last look:
            left = os.read(self._wake_r, 4096)
        except OSError:
            left = b""
        for sig in sorted(set(left)):     # pending again (blocked now): the run loop
            signal.pthread_kill(self.m.events.ident or _thread.get_ident(), sig)
        self.m.events.remove_source(self.fd)
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        try:
            self.sock.close()
        except OSError:
            pass


class GdbStub:
    """The listener of one machine and its (at most one) session."""

    def __init__(self, m, address: str):
        from .live_target import LiveTarget
        self.m = m
        allow = bool(getattr(m.opts, "gdb_allow_remote", False))
        self.listener = Listener(address, allow_remote=allow, refused=self._refused)
        self.address = self.listener.address
        if self.listener.remote:
            _warn(f"gdb: WARNING: the stub listens on {self.address}, which is not a "
                  "loopback address: anyone who can reach it can read and write guest "
                  "memory, and write cores in --core-dir (the protocol has no "
                  "authentication)")
        self.target = getattr(m, "live_target", None) or LiveTarget(m)
        m.live_target = self.target
        self.pending = None           # (socket, Peer) accepted, not yet served
        self.session = None           # the channel of the session being served
        self.shown = None             # the last stop a session showed (crash shown)
        self.refusing = []            # refused connections waiting for a packet
        m.gdb = self
        if not getattr(m, "gdb_address", None):
            m.gdb_address = self.address
        m.events.add_source(self.listener.fileno(), self._on_connect)

    def command(self) -> str:
        """The exact gdb command line that attaches to this stub."""
        where = self.address[5:] if self.address.startswith("unix:") else self.address
        return f"gdb {os.path.abspath(self.m.image.path)} -ex 'target remote {where}'"

    def _on_connect(self, m):
        """Accept every queued connection: SIGIO comes once per arrival, so one left
        in the queue would wait for the next client, and a full queue gets none."""
        out = None
        while True:
            got = self.listener.accept()
            if got is None:
                return out
            if got[1].refused:
                from ..gdbstub.transport import refusal
                self._refuse(got[0], refusal(got[1]))
            elif self.session is not None or self.pending is not None:
                _warn("gdb: refused a second client (one debugger at a time)")
                self._refuse(got[0])
            else:
                self.pending = got
                out = Attach()

    def _refused(self, msg):
        """A peer the listener turned away (not the monitor's uid): one line on
        stderr and in the log."""
        _warn(msg)
        _log(self.m, "gdb-refused", reason=msg)

    def _refuse(self, conn, body=None):
        """A refused client gets an error reply to its first packet, then EOF; without
        blocking the guest (the refusal is an async source of its own)."""
        from ..gdbstub.transport import REFUSAL
        from ..gdbstub.packets import checksum
        body = body or REFUSAL[1:-1]
        pkt = b"+$" + body + b"#%02x" % checksum(body)
        fd = conn.fileno()
        while len(self.refusing) >= 4:        # many idle connections cost no more fds
            old = self.refusing.pop(0)
            self.m.events.remove_source(old.fileno())
            old.close()
        self.refusing.append(conn)

        def readable(m, conn=conn):
            try:
                data = conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                data = b""
            try:
                if data:
                    send_all(conn, pkt, stall=0.5)
                    conn.shutdown(socket.SHUT_WR)
            except (ConnectionError, OSError):
                pass
            if conn in self.refusing:
                m.events.remove_source(fd)
                self.refusing.remove(conn)
                conn.close()
            return None
        m = self.m
        m.events.add_source(fd, readable)

    def wait_for_client(self):
        """Block (serving events) until a client connects; a Stop if the monitor is
        told to end meanwhile."""
        while self.pending is None:
            _ready, stop = self.m.events.wait((), None)
            if stop is not None and not isinstance(stop, Attach):
                return stop
        return None

    def serve(self, stop) -> Outcome:
        """Serve the pending connection, starting from `stop` (what `?` answers)."""
        m = self.m
        (conn, peer), self.pending = self.pending, None
        chan = EventsChannel(m, conn)
        self.session = chan
        dbg = self.target.debugger()
        if is_terminal(stop):
            dbg._stopped(stop)           # dead: nothing left to complete or run
        dbg.attach()
        self.target.set_stop(stop)
        _log(m, "gdb-attach", address=self.address)
        flight.log(m, "gdb", "attach")
        out = Outcome("disconnect")
        try:
            out = GdbServer(self.target, chan, log=_warn, owner=peer.owner).serve(stop)
        except UkdbgError as e:
            from .. import sandbox
            _warn(f"gdb session ended: {sandbox.describe(e, 'gdb stub') or e}")
        except Exception as e:          # a bug in the stub: keep the guest alive
            from .. import sandbox
            why = sandbox.describe(e, "gdb stub")
            if why is None and os.environ.get("UKDBG_DEBUG"):
                raise
            _warn(f"gdb session ended: {why}" if why else
                  f"gdb session ended by an internal error: {type(e).__name__}: {e}")
        finally:
            self.session = None
            self.shown = dbg.t.stop_reason()
            dbg.detach()
            chan.close()
            how = "dropped" if chan.dropped else out.kind
            _log(m, "gdb-detach", how=how)
            flight.log(m, "gdb", f"detach ({how})")
        return out


def drive(m):
    """The machine's driver while a stub exists: run, serve sessions, run on."""
    stub = m.gdb
    dbg = stub.target.debugger()
    stop = None
    first = Interrupted()
    if getattr(m.opts, "gdb_wait", False) and not getattr(stub, "waited", False):
        stub.waited = True
        stop = stub.wait_for_client()
        if stop is not None:
            return stop
        first = Stepped()             # held at the first instruction, as after exec
    while True:
        if stub.pending is not None:
            # A client arrived (maybe just as the guest ended: it is told that).
            initial = stop if stop is not None and not isinstance(stop, Attach) else first
            out = stub.serve(initial)
            if out.kind == "end":
                return out.stop
            if dbg.dead is not None:
                return dbg.dead
            if stop is not None and is_terminal(stop):
                return stop
        first = Interrupted()
        stop = loop.run(m)
        if stub.pending is None and not isinstance(stop, Attach):
            return stop


def start_server(m, address: str) -> str:
    """Start the stub on a running machine (attach at any time); returns the address
    it listens on ("HOST:PORT" or "unix:PATH")."""
    stub = getattr(m, "gdb", None)
    if stub is None:
        stub = GdbStub(m, address)
        if m.ending_hooks.count(_ending) == 0:
            m.ending_hooks.append(_ending)
    return stub.address


def setup(m, opts) -> None:
    if opts.gdb:
        stub = GdbStub(m, opts.gdb)
        m.driver = drive
        _warn(f"gdb: listening on {stub.address}"
              + (", waiting for gdb" if opts.gdb_wait else "")
              + f": {stub.command()}")
    m.ending_hooks.append(_ending)


def _ending(m, stop) -> None:
    """Last ending hook: the gdb listener goes away; with --gdb-on-crash a crash that no
    debugger has seen yet is held frozen for one."""
    stub = getattr(m, "gdb", None)
    if isinstance(stop, Killed) and stop.reason == "gdb" and not m.reported:
        _warn(f"{os.path.basename(m.image.path)}: killed by gdb")
        m.reported = True
    if getattr(m.opts, "gdb_on_crash", False) and isinstance(stop, Crashed) and \
            (stub is None or stub.shown is not stop):
        try:
            _hold_for_gdb(m, stop)
        except UkdbgError as e:
            _warn(str(e))
        stub = getattr(m, "gdb", None)
    if stub is not None:
        m.events.remove_source(stub.listener.fileno())
        stub.listener.close()


def _hold_for_gdb(m, stop) -> None:
    stub = getattr(m, "gdb", None) or GdbStub(m, m.opts.gdb or "127.0.0.1:0")
    app = os.path.basename(m.image.path)
    if not m.reported:
        _warn(f"{app}: {stop.message}")
        m.reported = True
    _warn(f"{app} crashed; the guest is frozen for gdb (Ctrl-C to end): {stub.command()}")
    if stub.wait_for_client() is not None:
        return
    stub.serve(stop)
