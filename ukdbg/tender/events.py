"""ukdbg/tender/events.py: how anything other than the guest gets the vCPU thread's ear.

One thread runs the guest and serves everything else (no locks, no hand-offs). It keeps
the signals in BLOCKED blocked at all times except (a) inside KVM_RUN, through
KVM_SET_SIGNAL_MASK, so each ends KVM_RUN with EINTR (or the next KVM_RUN, if it came
between two), after which it is consumed with sigtimedwait(); and (b) inside wait(),
the one blocking primitive (POLL, a paused guest, a stopped gdb session), where they are
unblocked around poll() and reported through the wakeup fd. So none is ever missed.
  SIGINT/SIGTERM/SIGHUP/SIGQUIT   end the guest (signal_handlers may override)
  SIGALRM                         the --timeout timer (without --timeout: the
                                  control socket's opening, modules/control.py)
  SIGIO                           an async source is readable (sockets in O_ASYNC mode
                                  owned by this thread: gdb, the control socket)
  SIGUSR1                         a kick from another thread: run the posted callables
"""

import _signal
import _thread
import fcntl
import os
import _struct as struct  # not struct.py: one import less at start-up

SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGALRM, SIGTERM, SIGIO = 1, 2, 3, 10, 14, 15, 29
BLOCKED = (SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGALRM, SIGTERM, SIGIO)
KICK = SIGUSR1
F_SETSIG = 10
F_SETOWN_EX = 15
F_OWNER_TID = 0


def _noop(signum, frame):
    pass


def _bits(signals) -> int:
    b = 0
    for s in signals:
        b |= 1 << (int(s) - 1)
    return b


class Events:
    def __init__(self, m):
        self.m = m
        self.tid = 0                 # native id of the vCPU thread (F_SETOWN_EX)
        self.ident = 0               # its threading ident (pthread_kill)
        self.pending = []            # callables posted by other threads
        self.sources = {}            # fd -> callback(m) -> Stop | None
        self.signal_handlers = {}    # signo -> fn(m, signo) -> Stop | None
        self.stop_request = None     # a Stop a callback wants the loop to return
        self.idle_hooks = []         # fn() before wait() blocks (a recorder flushes)
        self.armed = False
        self.blocked = BLOCKED
        self._wake_r = self._wake_w = -1
        self._sigio_was_blocked = None
        self._poll = None            # native.Poller, made at the first wait

    def watch_signal(self, signo: int, handler) -> None:
        """Route signo to handler(m, signo) -> Stop | None. Before arm() for signals
        outside BLOCKED (e.g. --core-on USR2). The flight recorder logs each signal
        unless the handler has a true `quiet` attribute (the monitor's own timers)."""
        self.signal_handlers[signo] = handler
        if signo not in self.blocked:
            if self.armed:
                raise RuntimeError("watch_signal for a new signal after arm()")
            self.blocked = self.blocked + (signo,)

    def arm(self) -> None:
        """Call once, in the main (vCPU) thread, before the first KVM_RUN."""
        self._saved_handlers = {}
        for s in self.blocked:
            prev = _signal.getsignal(s)
            if prev != _signal.SIG_IGN:
                self._saved_handlers[s] = prev
                _signal.signal(s, _noop)
        old = _signal.pthread_sigmask(_signal.SIG_BLOCK, self.blocked)
        if self._sigio_was_blocked is False:
            old = set(old) - {SIGIO}          # blocked by add_source, not by the caller
        self._saved_mask = old
        self.m.vcpu.set_signal_mask(_bits(old) & ~_bits(self.blocked))
        self.tid = _thread.get_native_id()
        self.ident = _thread.get_ident()
        self.armed = True

    # --- from other threads -------------------------------------------------------------
    def post(self, fn, kick=True) -> None:
        """Run fn(m) on the vCPU thread at its next exit (thread-safe). kick=False: do
        not force one (a guest computing without exits then runs fn later)."""
        self.pending.append(fn)
        if kick:
            self.kick()

    def kick(self) -> None:
        if self.armed:
            _signal.pthread_kill(self.ident, KICK)

    # --- async sockets ---------------------------------------------------------------------
    def add_source(self, fd: int, callback) -> None:
        """Have callback(m) run when fd is readable, even while the guest runs."""
        if not self.armed:
            # A client may connect between set-up and arm(): its SIGIO must wait
            # (pending) rather than kill the monitor with the default action.
            was = _signal.pthread_sigmask(_signal.SIG_BLOCK, (SIGIO,))
            if self._sigio_was_blocked is None:
                self._sigio_was_blocked = SIGIO in was
        fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", F_OWNER_TID,
                                                 self.tid or _thread.get_native_id()))
        fcntl.fcntl(fd, F_SETSIG, SIGIO)
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_ASYNC | os.O_NONBLOCK)
        self.sources[fd] = callback

    def remove_source(self, fd: int) -> None:
        if self.sources.pop(fd, None) is not None:
            try:
                fl = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_ASYNC)
            except OSError:
                pass

    # --- on the vCPU thread ----------------------------------------------------------------
    def pending_signals(self) -> list:
        """Consume the blocked signals that are pending (after KVM_RUN's EINTR)."""
        out = []
        while True:
            info = _signal.sigtimedwait(self.blocked, 0)
            if info is None:
                return out
            out.append(info.si_signo)

    def service(self, signals=None):
        """Handle what is pending; returns a Stop for the loop to return, or None."""
        if signals is None:
            signals = self.pending_signals() if self.armed else []
        for s in signals:
            if s == KICK:
                pass                     # the posted callables run below
            elif s == SIGIO:
                self._poll_sources()
            else:
                fn = self.signal_handlers.get(s)
                if self.m.flight is not None and not getattr(fn, "quiet", False):
                    self.m.flight.add("signal", signo=s)
                if fn is not None:
                    self._request(fn(self.m, s))
                else:
                    from ..target import Killed
                    self._request(Killed(s, "signal"))
        while self.pending:
            self._request(self.pending.pop(0)(self.m))
        stop, self.stop_request = self.stop_request, None
        return stop

    def _request(self, stop):
        """The first Stop wins, except that an ending (a signal, a stop request) wins
        over an interruption (e.g. a gdb client arriving at the same moment): the
        ending would otherwise be lost, the signal being consumed."""
        if stop is None:
            return
        cur = self.stop_request
        if cur is None:
            self.stop_request = stop
            return
        from ..target import Interrupted
        if isinstance(cur, Interrupted) and not isinstance(stop, Interrupted):
            self.stop_request = stop

    def _poll_sources(self):
        if not self.sources:
            return
        for fd in self._poller().poll(list(self.sources), 0):
            cb = self.sources.get(fd)
            if cb is not None:
                self._request(cb(self.m))

    def _poller(self):
        # poll(2) through native.py: _ctypes is loaded anyway (the sandbox), select.so
        # would be one more shared object to load in every run that sleeps
        if self._poll is None:
            from ..native import Poller
            self._poll = Poller()
        return self._poll

    def wait(self, fds=(), timeout=None):
        """Block until one of fds is readable, a signal/kick arrives, or timeout (s).

        Async sources and signals are serviced here. Returns (ready_fds, stop): a
        non-None stop means the caller should give up its wait and return it.
        """
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        watched = [*fds, self._wake_r, *self.sources]
        poller = self._poller()
        # poll() takes an int of milliseconds; a guest may ask for centuries (POLL's
        # timeout is the guest's u64): wait at most ~24 days per call, callers loop.
        ms = -1 if timeout is None else min(max(0, int(timeout * 1000 + 0.999)), 2**31 - 1)
        if self.idle_hooks and ms != 0 and not poller.poll(watched, 0):
            for fn in self.idle_hooks:
                fn()
        old_fd = _signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False) \
            if self.armed else -1
        if self.armed:
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, self.blocked)
        try:
            events = poller.poll(watched, ms)
        finally:
            if self.armed:
                _signal.pthread_sigmask(_signal.SIG_BLOCK, self.blocked)
                _signal.set_wakeup_fd(old_fd)
        signals = []
        try:
            signals = list(os.read(self._wake_r, 4096))
        except BlockingIOError:
            pass
        ready = []
        for fd in events:
            if fd == self._wake_r:
                continue
            cb = self.sources.get(fd)
            if cb is not None:
                self._request(cb(self.m))
            elif fd in fds:
                ready.append(fd)
        stop = self.service(signals + (self.pending_signals() if self.armed else []))
        return ready, stop

    def close(self):
        """Give the thread its signals back (an embedding program, a test, a gdb
        started later in this process must not inherit them blocked)."""
        if self.armed:
            self.armed = False
            try:
                self.pending_signals()          # drop what the guest's end left
                _signal.pthread_sigmask(_signal.SIG_SETMASK, self._saved_mask)
                for s, h in self._saved_handlers.items():
                    if h is not None:
                        _signal.signal(s, h)
            except (OSError, ValueError):
                pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
