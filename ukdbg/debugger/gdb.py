"""ukdbg/debugger/gdb.py: `--gdb [HOST:]PORT|unix:PATH`, `--gdb-wait`, `--gdb-on-crash`.

The vCPU thread serves gdb; there are no extra threads. The listening socket is an
events async source, so a client may attach at any time: its arrival ends KVM_RUN (or
a POLL's wait) and loop.run returns an Attach stop, whose driver (`drive`) reports where
the guest is and serves the session. While the guest runs under `continue`, the
session's socket is an async source too: a Ctrl-C byte ends KVM_RUN through SIGIO. While
stopped, reads block in events.wait, so signals to the monitor are still honoured.
"""

import fcntl
import os
import select
import signal
import sys
import time

from ..errors import UkdbgError
from ..gdbstub.server import GdbServer, Outcome, SessionEnded, is_terminal
from ..gdbstub.transport import Listener, send_all
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
# the spin would only delay the client).
SPIN = 0.00025 if len(os.sched_getaffinity(0)) > 1 else 0.0


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
        if m.events.armed:
            self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _unblock(self, on: bool) -> None:
        """Signals reach their (no-op) handlers, hence the wakeup pipe, while stopped;
        they are blocked again before the guest runs (events.py)."""
        if on != self._unblocked and self.m.events.armed:
            signal.pthread_sigmask(signal.SIG_UNBLOCK if on else signal.SIG_BLOCK,
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
        while not self.eof:
            try:
                data = self.sock.recv(1 << 18)
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
            if len(data) < 1 << 18:
                return                    # most likely all there is; poll tells if not

    def _readable(self, m):
        self._drain()
        if self._running and (self.ctrl_c or self.eof):
            flight.log(m, "gdb", "interrupt" if self.ctrl_c else "disconnect")
            return Interrupted()
        return None

    def read(self) -> bytes:
        ev = self.m.events
        while not self.buf and not self.eof:
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
        """poll(0) for up to SPIN seconds: gdb answers a stop or a memory read within
        ~0.1 ms, and on a host whose idle vCPUs halt (nested KVM) a sleeping monitor
        costs gdb a cross-CPU wake-up per packet, a third of a step's time. Bounded
        and adaptive (see read()): an idle gdb costs one spin, then poll() blocks."""
        end = time.perf_counter() + SPIN
        poll = self._poll.poll
        while True:
            ready = poll(0)
            if ready or time.perf_counter() > end:
                return ready

    def _slow_wait(self, timeout=None):
        self._unblock(False)                                 # as events.wait expects
        _ready, stop = self.m.events.wait((), timeout)     # drains us (a source)
        self._check(stop)

    @staticmethod
    def _check(stop):
        if isinstance(stop, (Killed, Exited, Crashed)):
            raise SessionEnded(stop)

    def write(self, data) -> None:
        send_all(self.sock, data)

    def close(self) -> None:
        self._unblock(False)
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
        self.listener = Listener(address)
        self.address = self.listener.address
        self.target = getattr(m, "live_target", None) or LiveTarget(m)
        m.live_target = self.target
        self.pending = None           # an accepted connection not yet served
        self.session = None           # the channel of the session being served
        self.shown = None             # the last stop a session showed (crash shown)
        self.refusing = set()
        m.gdb = self
        if not getattr(m, "gdb_address", None):
            m.gdb_address = self.address
        m.events.add_source(self.listener.fileno(), self._on_connect)

    def command(self) -> str:
        """The exact gdb command line that attaches to this stub."""
        where = self.address[5:] if self.address.startswith("unix:") else self.address
        return f"gdb {os.path.abspath(self.m.image.path)} -ex 'target remote {where}'"

    def _on_connect(self, m):
        conn = self.listener.accept()
        if conn is None:
            return None
        if self.session is not None or self.pending is not None:
            self._refuse(conn)
            return None
        self.pending = conn
        return Attach()

    def _refuse(self, conn):
        """A second client gets an error reply to its first packet, then EOF; without
        blocking the guest (the refusal is an async source of its own)."""
        from ..gdbstub.transport import REFUSAL
        from ..gdbstub.packets import checksum
        body = REFUSAL[1:-1]
        pkt = b"+$" + body + b"#%02x" % checksum(body)
        fd = conn.fileno()
        self.refusing.add(conn)
        _warn("gdb: refused a second client (one debugger at a time)")

        def readable(m, conn=conn):
            try:
                data = conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                data = b""
            try:
                if data:
                    send_all(conn, pkt)
            except ConnectionError:
                pass
            m.events.remove_source(fd)
            self.refusing.discard(conn)
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
        conn, self.pending = self.pending, None
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
            out = GdbServer(self.target, chan, log=_warn).serve(stop)
        except UkdbgError as e:
            _warn(f"gdb session ended: {e}")
        except Exception as e:          # a bug in the stub: keep the guest alive
            if os.environ.get("UKDBG_DEBUG"):
                raise
            _warn(f"gdb session ended by an internal error: {type(e).__name__}: {e}")
        finally:
            self.session = None
            self.shown = dbg.t.stop_reason()
            dbg.detach()
            chan.close()
            _log(m, "gdb-detach", how=out.kind)
            flight.log(m, "gdb", f"detach ({out.kind})")
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


def start_server(m, address: str = "127.0.0.1:0") -> str:
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
