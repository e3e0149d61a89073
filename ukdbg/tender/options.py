"""ukdbg/tender/options.py: `ukdbg run` options, solo5-hvt's syntax included (§16).

A small hand parser instead of argparse: solo5-hvt's `--block:NAME=PATH` options do not
fit argparse, and argparse costs ~6 ms of the 8 ms start-up budget. Accepts both
`--mem=64` and `--mem 64`; `--` or the first non-option argument ends the options.
"""

from ..errors import UsageError
from . import abi

USAGE = """\
usage: ukdbg run [OPTIONS] [--] APP.hvt [GUEST ARGS...]

Boot a Solo5 hvt unikernel on /dev/kvm and run it like a process.

guest:
  --mem=MB, --mem MB           guest memory in MiB (default 512; rounded down to 2 MiB)
  --block:NAME=PATH            attach file PATH as block device NAME
  --block-sector-size:NAME=N   block size of NAME (power of two >= 512; default 512)
  --net:NAME=IFACE             attach tap interface IFACE as network device NAME
  --net-mac:NAME=MAC           MAC address of NAME (default: random, locally administered)
debugging:
  --gdb [HOST:]PORT|unix:PATH  serve the GDB remote protocol (default host 127.0.0.1);
                               a bare --gdb means 127.0.0.1:1234 and --gdb-wait (solo5)
  --gdb-wait                   hold the guest at its first instruction until gdb continues
  --gdb-on-crash               on a crash keep the guest frozen and wait for gdb to attach
  --gdb-allow-remote           let --gdb listen on a non-loopback address (no authentication)
  --reverse                    with --gdb: checkpoints, so gdb's reverse-stepi,
                               reverse-continue, ... work (deterministic guests only)
  --checkpoint-mem MB          memory kept for checkpoints (default 256)
post-mortem:
  --core-dir DIR               where cores go (default: the current directory)
  --no-core                    do not write a core when the guest crashes
  --core-on SIGNAL             write a live core (guest continues) on SIGNAL, e.g. USR2
  --report text|json           crash report format on stderr (default text)
  --flight N                   keep the last N events (hypercalls, exits, signals,
                               debugger actions) for cores and reports (default
                               1024; 0: off)
management:
  --timeout SECONDS            end the guest (with a core) if it runs longer
  --trace[=FILE]               print one line per hypercall (strace style)
  --trace-summary              print a table of hypercalls at exit (strace -c style)
  --log FILE                   append JSON lines for lifecycle events
  --console FILE               also copy the guest's console output to FILE
record and replay:
  --record FILE                record every input of the run to FILE (ukdbg replay FILE)
  --record-limit SIZE          stop recording (not the guest) at SIZE bytes (e.g. 100M)
  --no-control                 do not open the control socket (ukdbg ps/status/...)
  --no-sandbox                 no seccomp filter after set-up (debugging ukdbg itself;
                               docs/security.md)
  -h, --help                   this help;  --version  the version

solo5-hvt spellings (a solo5-hvt command line runs unchanged):
  --mem=MB --block:NAME=PATH --block-sector-size:NAME=N --net:NAME=IFACE
  --net-mac:NAME=MAC           the same as above (--net:NAME=@FD, a passed fd, is refused)
  --gdb                        bare (solo5-hvt-debug): --gdb 127.0.0.1:1234 --gdb-wait
  --gdb-port=PORT              --gdb 127.0.0.1:PORT; with a bare --gdb (either order):
                               --gdb 127.0.0.1:PORT --gdb-wait
  --dumpcore=DIR               --core-dir DIR (ukdbg writes cores on any crash anyway)
  --wait-gdb                   --gdb-wait

exit status:
  0-255     the guest's own exit status (255: solo5_abort, a failed assert, a trap)
  1         the monitor could not start the guest (image, KVM, devices)
  2         bad command line
  124       --timeout expired (a core is written)
  128+N     ended by signal N: SIGINT 130, SIGTERM 143, SIGHUP 129, SIGQUIT 131 (core),
            or a fault the monitor detected, reported as the matching signal:
            SIGSEGV 139 (triple fault, write to read-only memory),
            SIGBUS 135 (unbacked memory, host I/O failure),
            SIGILL 132 (KVM internal error or entry failure, hlt),
            SIGSYS 159 (bad I/O port, unknown hypercall, bad hypercall pointer)

examples:
  ukdbg run fixtures/build/hello.hvt
  ukdbg run --mem=64 --block:storage=disk.img app.hvt --verbose
  ukdbg run --gdb :1234 --gdb-wait app.hvt   then: gdb app.hvt -ex 'target remote :1234'
  ukdbg run --core-dir /var/crash app.hvt;   then: ukdbg core /var/crash/app.<pid>.core
"""


class RunOptions:
    def __init__(self):
        self.mem_mb = abi.MEM_DEFAULT_MB
        self.mem_size = 0
        self.blocks = {}
        self.block_sector = {}
        self.nets = {}
        self.net_macs = {}
        self.gdb = None               # "host:port" | "unix:PATH" | None
        self.gdb_wait = False
        self.gdb_on_crash = False
        self.gdb_allow_remote = False
        self.core_dir = "."
        self.no_core = False
        self.core_on = []             # signal numbers
        self.report = "text"
        self.flight = 1024            # tender/flight.py DEFAULT
        self.timeout = None
        self.trace = None             # None | "-" (stderr) | path
        self.trace_summary = False
        self.log = None
        self.console = None
        self.control = True
        self.sandbox = True           # seccomp after set-up (ukdbg/sandbox.py)
        self.reverse = False          # issue 11: checkpoints for gdb's reverse commands
        self.checkpoint_mem = 256     # MiB kept for checkpoints
        self.record = None            # --record FILE (docs/replay.md)
        self.record_limit = None      # bytes
        self.app = None
        self.args = []
        self.argv = []


# option -> (attribute, takes a value). Options with a NAME part are handled apart.
_VALUED = {"--mem": "mem", "--gdb-port": "gdb_port", "--core-dir": "core_dir",
           "--dumpcore": "core_dir", "--core-on": "core_on", "--report": "report",
           "--timeout": "timeout", "--log": "log", "--console": "console",
           "--flight": "flight", "--checkpoint-mem": "checkpoint_mem",
           "--record": "record", "--record-limit": "record_limit"}
_FLAGS = {"--gdb-wait": "gdb_wait", "--wait-gdb": "gdb_wait", "--gdb-on-crash": "gdb_on_crash",
          "--gdb-allow-remote": "gdb_allow_remote",
          "--no-core": "no_core", "--trace-summary": "trace_summary", "--reverse": "reverse"}
_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "USR1": 10, "USR2": 12, "ALRM": 14, "TERM": 15,
            "CONT": 18, "WINCH": 28, "PWR": 30}


def _looks_like_address(v: str) -> bool:
    """host:port or unix:..., valid or not (so a bad one is an error, not the APP)."""
    if v.startswith("unix:"):
        return True
    host, colon, port = v.rpartition(":")
    return bool(colon) and "/" not in v and port.isdigit()


def _is_gdb_address(v: str) -> bool:
    if v.startswith("unix:"):
        return len(v) > 5
    host, _, port = v.rpartition(":")
    return port.isdigit() and 0 <= int(port) <= 65535


def _named(opt: str, value: str):
    name, eq, rest = value.partition("=")
    if not eq or not name or not rest:
        raise UsageError(f"{opt}:{value}: expected {opt}:NAME=VALUE")
    if not name.isalnum() or len(name) > 67 or not name.isascii():
        raise UsageError(f"{opt}:{value}: device names are 1-67 letters or digits")
    return name, rest


def parse_signal(text: str) -> int:
    t = text.upper().removeprefix("SIG")
    if t.isdigit() and 0 < int(t) < 65:
        return int(t)
    if t in _SIGNALS:
        return _SIGNALS[t]
    raise UsageError(f"unknown signal '{text}' (e.g. USR2, 12)")


def parse_run(argv: list) -> RunOptions:
    """Parse `ukdbg run` arguments (argv without 'run'). Raises UsageError."""
    o = RunOptions()
    o.argv = list(argv)
    i = 0
    n = len(argv)
    while i < n:
        a = argv[i]
        i += 1
        if a == "--":
            if i >= n:
                raise UsageError("missing APP after --")
            o.app = argv[i]
            o.args = argv[i + 1:]
            break
        if a in ("-h", "--help"):
            raise SystemExit(_help())
        if a == "--version":
            from .. import __version__
            print(f"ukdbg {__version__} (Solo5 hvt ABI version {abi.HVT_ABI_VERSION})")
            raise SystemExit(0)
        if not a.startswith("-") or a == "-":
            o.app = a
            o.args = argv[i:]
            break
        opt, eq, val = a.partition("=")
        if opt.startswith("--block:") or opt.startswith("--block-sector-size:") \
                or opt.startswith("--net:") or opt.startswith("--net-mac:"):
            kind, _, rest = a.partition(":")
            name, value = _named(kind, rest)
            if kind == "--block":
                o.blocks[name] = value
            elif kind == "--block-sector-size":
                if not value.isdigit() or int(value) < 512 or int(value) & (int(value) - 1):
                    raise UsageError(f"{a}: the block size must be a power of two >= 512")
                o.block_sector[name] = int(value)
            elif kind == "--net":
                if value.startswith("@"):
                    raise UsageError(f"{a}: the --net:NAME=@FD form is not supported; "
                                     "name the tap interface")
                o.nets[name] = value
            else:
                from .modules.net import parse_mac
                try:
                    o.net_macs[name] = parse_mac(value)
                except ValueError as e:
                    raise UsageError(f"{a}: {e}") from None
            continue
        if opt == "--gdb":
            if eq:
                val_ = val
            elif i < n and (_is_gdb_address(argv[i]) or _looks_like_address(argv[i])):
                val_ = argv[i]
                i += 1
            else:                       # solo5-hvt-debug's bare --gdb (keeps --gdb-port)
                val_ = o.gdb or "127.0.0.1:1234"
                o.gdb_wait = True
            if not _is_gdb_address(val_):
                raise UsageError(f"--gdb {val_}: expected [HOST:]PORT or unix:PATH")
            o.gdb = val_
            continue
        if opt == "--trace":
            o.trace = val if eq else "-"
            continue
        if opt == "--no-control":
            o.control = False
            continue
        if opt == "--no-sandbox":
            o.sandbox = False
            continue
        if a in _FLAGS:
            setattr(o, _FLAGS[a], True)
            continue
        if opt in _VALUED:
            if not eq:
                if i >= n:
                    raise UsageError(f"{opt} needs a value")
                val = argv[i]
                i += 1
            _set_valued(o, opt, val)
            continue
        raise UsageError(f"unknown option '{a}'", "see ukdbg run --help")
    if o.app is None:
        raise UsageError("missing APP (the unikernel to run)", "see ukdbg run --help")
    if o.gdb_wait and o.gdb is None:
        o.gdb = "127.0.0.1:1234"
    if o.reverse and o.gdb is None:
        raise UsageError("--reverse needs --gdb (reverse execution is a gdb feature)")
    if o.reverse and o.record is not None:
        # Reverse execution re-runs the guest from checkpoints and answers WALLTIME
        # from its own history: the recording would miss or repeat inputs.
        raise UsageError("--record cannot be combined with --reverse: record the run, "
                         "then 'ukdbg replay FILE --gdb' debugs it with reverse execution")
    if o.record_limit is not None and o.record is None:
        raise UsageError("--record-limit needs --record FILE")
    return o


def _set_valued(o, opt, val):
    if opt == "--mem":
        try:
            mb = int(val)
        except ValueError:
            raise UsageError(f"malformed argument to --mem: '{val}' (MiB, e.g. --mem=64)") \
                from None
        if mb <= 0:
            raise UsageError(f"malformed argument to --mem: '{val}' (must be > 0)")
        o.mem_mb = mb
    elif opt == "--gdb-port":
        if not val.isdigit() or int(val) > 65535:
            raise UsageError(f"--gdb-port={val}: expected a port number")
        o.gdb = f"127.0.0.1:{val}"
    elif opt in ("--core-dir", "--dumpcore"):
        o.core_dir = val
    elif opt == "--core-on":
        o.core_on.append(parse_signal(val))
    elif opt == "--report":
        if val not in ("text", "json"):
            raise UsageError(f"--report {val}: expected text or json")
        o.report = val
    elif opt == "--timeout":
        try:
            t = float(val)
        except ValueError:
            t = -1
        if not t > 0:
            raise UsageError(f"--timeout {val}: expected a positive number of seconds")
        o.timeout = t
    elif opt == "--flight":
        if not val.isdigit() or int(val) > 1 << 20:
            raise UsageError(f"--flight {val}: expected a number of events, 0 to 1048576")
        o.flight = int(val)
    elif opt == "--log":
        o.log = val
    elif opt == "--console":
        o.console = val
    elif opt == "--checkpoint-mem":
        if not val.isdigit() or int(val) <= 0:
            raise UsageError(f"--checkpoint-mem {val}: expected a positive number of MiB")
        o.checkpoint_mem = int(val)
    elif opt == "--record":
        o.record = val
    elif opt == "--record-limit":
        o.record_limit = parse_size(val, opt)


def parse_size(val: str, opt: str) -> int:
    """'4096', '64k', '100M', '2G' -> bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    v = val.strip().upper().removesuffix("B").removesuffix("I")
    u = v[-1:] if v[-1:] in units else ""
    num = v[:-1] if u else v
    if not num.isdigit() or int(num) <= 0:
        raise UsageError(f"{opt} {val}: expected a size in bytes (e.g. 4096, 64k, 100M)")
    return int(num) * units[u]


def _help():
    import sys
    sys.stdout.write(USAGE)
    return 0


def check_against_manifest(o: RunOptions, manifest) -> None:
    """Every --block/--net must name a device of that type in the manifest."""
    def check(names, type_, opt):
        for name in names:
            d = manifest.find(name)
            if d is None or d.type != type_:
                declared = ", ".join(f"{x.name} ({x.type_name})" for x in manifest.devices) \
                    or "no devices"
                raise UsageError(f"{opt}:{name}: the unikernel declares no "
                                 f"{abi.MFT_TYPE_NAMES[type_]} device '{name}' "
                                 f"(it declares: {declared})")
    check(o.blocks, abi.MFT_DEV_BLOCK_BASIC, "--block")
    check(o.block_sector, abi.MFT_DEV_BLOCK_BASIC, "--block-sector-size")
    check(o.nets, abi.MFT_DEV_NET_BASIC, "--net")
    check(o.net_macs, abi.MFT_DEV_NET_BASIC, "--net-mac")
