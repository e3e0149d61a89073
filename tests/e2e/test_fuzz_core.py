"""Fuzz the core reader (issue 9): seeded mutants of real cores, a fixed budget.

Cores of three crash fixtures (made by the real `ukdbg run`) are mutated: ELF header
fields, program headers, note headers, note contents (registers, the UKDBG notes'
extent tables and strings), guest memory (page tables and stack: the page walk and the
unwinder read them), and truncation. Each mutant goes through `ukdbg core CORE -c ...`
in-process (ukdbg.cli.main, as the command runs it). Every one must give output or
one-line errors: no traceback, no "internal" error, no hang. Most run without the
image's symbols (DWARF parsing is the slow part and is not what is fuzzed here); a
batch runs with them and with --report. UKDBG_FUZZ_SEED=N explores other seeds.
"""

import contextlib
import io
import os
import random
import signal
import struct

import pytest

from inspect_support import app_path, core_of

from ukdbg.cli import main
from ukdbg.coredump import format as F

pytestmark = pytest.mark.kvm
SEED = int(os.environ.get("UKDBG_FUZZ_SEED", "9"))
N_MUTANTS = 330
SOURCES = ("nullwrite", "recursion", "sse-crash")
COMMANDS = "info; bt; frame 1; regs; x/8xg $rsp; x/16xb $pc; x/2i $pc; sym $pc; console; mem"
EDGE = (0, 1, 7, 0x38, 0x40, 0x1000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1,
        1 << 63, (1 << 64) - 1)


class Sparse:
    """A core held as its data extents (it is sparse: copying it whole per mutant would
    write megabytes of zeros)."""

    def __init__(self, path):
        self.size = os.path.getsize(path)
        self.extents = []                 # [(offset, bytearray)]
        fd = os.open(path, os.O_RDONLY)
        try:
            off = 0
            while off < self.size:
                try:
                    lo = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
                hi = os.lseek(fd, lo, os.SEEK_HOLE)
                self.extents.append((lo, bytearray(os.pread(fd, hi - lo, lo))))
                off = hi
        finally:
            os.close(fd)

    def copy(self):
        c = Sparse.__new__(Sparse)
        c.size = self.size
        c.extents = [(o, bytearray(b)) for o, b in self.extents]
        return c

    def head(self):
        return self.extents[0][1]         # offset 0: headers and notes

    def write(self, path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, self.size)
            for o, b in self.extents:
                if o < self.size:
                    os.pwrite(fd, bytes(b[:self.size - o]), o)
        finally:
            os.close(fd)


def _u(rng, bits, old):
    v = rng.choice(EDGE + (old + 1, old - 1, old ^ (1 << rng.randrange(bits)),
                           rng.getrandbits(bits)))
    return v & ((1 << bits) - 1)


def mut_ehdr(rng, c):
    h = c.head()
    fields = [("phoff", 32, "Q"), ("phnum", 56, "H"), ("phentsize", 54, "H"),
              ("ehsize", 52, "H"), ("type", 16, "H"), ("machine", 18, "H"),
              ("ident", rng.randrange(4, 16), "B")]
    name, off, fmt = rng.choice(fields)
    old = struct.unpack_from("<" + fmt, h, off)[0]
    new = _u(rng, struct.calcsize(fmt) * 8, old)
    struct.pack_into("<" + fmt, h, off, new)
    return f"e_{name}={new:#x}"


def _phdrs(h):
    phoff, phnum = struct.unpack_from("<Q", h, 32)[0], struct.unpack_from("<H", h, 56)[0]
    return [phoff + i * F.PHDR.size for i in range(phnum)
            if phoff + (i + 1) * F.PHDR.size <= len(h)]


def mut_phdr(rng, c):
    h = c.head()
    offs = _phdrs(h)
    if not offs:
        return "(no phdrs)"
    k = rng.randrange(len(offs))
    names = ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align")
    fmts = "IIQQQQQQ"
    i = rng.randrange(8)
    pos = offs[k] + struct.calcsize("<" + fmts[:i])
    old = struct.unpack_from("<" + fmts[i], h, pos)[0]
    new = _u(rng, 32 if fmts[i] == "I" else 64, old)
    struct.pack_into("<" + fmts[i], h, pos, new)
    return f"phdr[{k}].p_{names[i]}={new:#x}"


def _notes(h):
    """[(offset of the note header, descsz offset, desc offset, desc size)]"""
    offs = _phdrs(h)
    if not offs:
        return []
    t, _f, off, _v, _p, filesz = struct.unpack_from("<IIQQQQ", h, offs[0])
    out = []
    p, end = off, min(off + filesz, len(h))
    while p + 12 <= end:
        namesz, descsz, _t = struct.unpack_from("<III", h, p)
        d = p + 12 + ((namesz + 3) & ~3)
        out.append((p, d, descsz))
        p = d + ((descsz + 3) & ~3)
    return out


def mut_note_header(rng, c):
    notes = _notes(c.head())
    if not notes:
        return "(no notes)"
    p, _d, _n = rng.choice(notes)
    j = rng.randrange(3)
    old = struct.unpack_from("<I", c.head(), p + 4 * j)[0]
    new = _u(rng, 32, old)
    struct.pack_into("<I", c.head(), p + 4 * j, new)
    return f"note@{p:#x}.{('namesz', 'descsz', 'type')[j]}={new:#x}"


def mut_note_desc(rng, c):
    h = c.head()
    notes = [n for n in _notes(h) if n[2] >= 8 and n[1] + n[2] <= len(h)]
    if not notes:
        return "(no note descs)"
    p, d, n = rng.choice(notes)
    q = d + rng.randrange(0, n - 7) & ~7
    if rng.random() < 0.6:
        old = struct.unpack_from("<Q", h, q)[0]
        struct.pack_into("<Q", h, q, _u(rng, 64, old))
        return f"note@{p:#x} desc u64 at +{q - d:#x}"
    h[q] = rng.randrange(256)
    return f"note@{p:#x} desc byte at +{q - d:#x}"


def mut_memory(rng, c):
    """Bytes of guest memory: page-table pages and the stack are in the data extents."""
    data = [(o, b) for o, b in c.extents[1:] if len(b)]
    if not data:
        return "(no data)"
    o, b = rng.choice(data)
    out = []
    for _ in range(rng.randint(1, 16)):
        q = rng.randrange(len(b)) & ~7
        if q + 8 <= len(b):
            struct.pack_into("<Q", b, q, _u(rng, 64, struct.unpack_from("<Q", b, q)[0]))
            out.append(f"{o + q:#x}")
    return "memory u64 at " + ",".join(out)


def mut_truncate(rng, c):
    n = rng.choice((0, 16, 63, 64, 100, 0x1000, rng.randrange(c.size), c.size - 1,
                    c.size // 2, len(c.head()) - 1))
    c.size = max(0, n)
    return f"truncated to {c.size:#x}"


MUTATORS = (mut_ehdr, mut_phdr, mut_note_header, mut_note_desc, mut_note_desc,
            mut_memory, mut_memory, mut_truncate)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_core(argv):
    out, err = io.StringIO(), io.StringIO()
    env_debug = os.environ.pop("UKDBG_DEBUG", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        if env_debug is not None:
            os.environ["UKDBG_DEBUG"] = env_debug
    return rc, out.getvalue(), err.getvalue()


def check(how, rc, out, err):
    """Output, or one-line errors: the core refused on stderr (`ukdbg: ...`), a failed
    command on stdout (`error: ...`, the others still run). Never an internal error."""
    assert "Traceback" not in err + out, (how, err)
    assert "internal" not in err and "error: internal" not in out, (how, err, out[-600:])
    for line in err.splitlines():
        assert line.startswith("ukdbg: "), (how, err)
    if rc != 0:
        failed = [ln for ln in out.splitlines() if ln.startswith("error: ")]
        assert rc == 1 and (err or failed), (how, rc, err, out[-600:])


def test_core_reader_mutants(tmp_path):
    rng = random.Random(SEED)
    sources = {name: Sparse(core_of(name)[0]) for name in SOURCES}
    old = signal.signal(signal.SIGALRM, _alarm)
    refused = ran = 0
    try:
        for i in range(N_MUTANTS):
            name = SOURCES[i % len(SOURCES)]
            c = sources[name].copy()
            how = "; ".join(rng.choice(MUTATORS)(rng, c)
                            for _ in range(rng.choice((1, 1, 2, 3))))
            p = str(tmp_path / f"m{i}.core")
            c.write(p)
            with_symbols = i % 10 == 0
            argv = ["core", p, "-c", COMMANDS]
            if not with_symbols:
                argv += ["--app", str(tmp_path / "no-image.hvt")]
            signal.setitimer(signal.ITIMER_REAL, 20)
            try:
                rc, out, err = run_core(argv)
                if with_symbols and rc == 0:
                    check(how, *run_core(["core", p, "--report"]))
            except Hang:
                pytest.fail(f"mutant {i} of {name} ({how}) hung `ukdbg core`")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            check(how, rc, out, err)
            if rc == 1 and not out and err.count("\n") == 1:
                refused += 1              # the core itself was refused: one line
            else:
                ran += 1
            os.unlink(p)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert refused + ran == N_MUTANTS >= 300
    print(f"core mutants: {refused} refused with one line, {ran} read (some commands may fail)")
    assert refused >= 50 and ran >= 50, (refused, ran)     # both sides are exercised


def test_the_unmutated_cores_read_cleanly(tmp_path):
    """The baseline of the fuzz test: each source core reads with no error at all."""
    for name in SOURCES:
        core = core_of(name)[0]
        rc, out, err = run_core(["core", core, "-c", COMMANDS, "--app",
                                 app_path(name.split("-")[0])])
        assert rc == 0 and "error" not in err, err
        assert "#0 " in out
