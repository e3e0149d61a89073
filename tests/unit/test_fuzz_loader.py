"""Fuzz the image loader (issue 9): seeded mutants of real fixture images, a fixed budget.

Each mutant changes ELF header fields, program headers, the Solo5 notes (ABI1 and the
MFT1 manifest), random bytes of the headers, or truncates the file. Every one must be
accepted or refused with one clear line (ExecutableError), never another exception,
never a hang. A batch also goes through the real `ukdbg run` (no traceback, exit 1 or a
guest that ran). UKDBG_FUZZ_SEED=N explores other seeds; the suite uses a fixed one.
"""

import os
import random
import signal
import struct

import pytest

from helpers import ukdbg
from ukdbg.elf import EHDR, NHDR, PHDR, PT_NOTE, ElfFile
from ukdbg.errors import ExecutableError
from ukdbg.kvm.memory import GuestMemory
from ukdbg.tender.loader import load, read_image

SEED = int(os.environ.get("UKDBG_FUZZ_SEED", "9"))
N_MUTANTS = 360
APPS = ("hello", "block", "net")
EDGE = (0, 1, 2, 7, 0x38, 0x40, 0xFFF, 0x1000, 0x100000, 0x7FFFFFFF, 0x80000000,
        0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
EHDR_FIELDS = ("type", "machine", "version", "entry", "phoff", "shoff", "flags", "ehsize",
               "phentsize", "phnum", "shentsize", "shnum", "shstrndx")
PHDR_FIELDS = ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align")
_EH_FMT = "HHIQQQIHHHHHH"
_PH_FMT = "IIQQQQQQ"


def _fit(fmt_char, v):
    return v & {"H": 0xFFFF, "I": 0xFFFFFFFF, "Q": (1 << 64) - 1}[fmt_char]


def _edge(rng, fmt_char, old):
    v = rng.choice(EDGE + (old + 1, old - 1, old * 2, old + 0x1000, rng.getrandbits(64)))
    return _fit(fmt_char, v)


def mut_ehdr(rng, data):
    i = rng.randrange(len(EHDR_FIELDS))
    fields = list(EHDR.unpack_from(data, 0))
    fields[i + 1] = _edge(rng, _EH_FMT[i], fields[i + 1])
    EHDR.pack_into(data, 0, *fields)
    return f"e_{EHDR_FIELDS[i]}={fields[i + 1]:#x}"


def mut_phdr(rng, data):
    e = ElfFile(bytes(data))
    k = rng.randrange(e.phnum)
    off = e.phoff + k * PHDR.size
    fields = list(PHDR.unpack_from(data, off))
    i = rng.randrange(len(PHDR_FIELDS))
    fields[i] = _edge(rng, _PH_FMT[i], fields[i])
    PHDR.pack_into(data, off, *fields)
    return f"phdr[{k}].p_{PHDR_FIELDS[i]}={fields[i]:#x}"


def mut_note(rng, data):
    e = ElfFile(bytes(data))
    notes = [s for s in e.segments if s.type == PT_NOTE and s.filesz >= 12]
    s = rng.choice(notes)
    what = rng.choice(("namesz", "descsz", "type", "name", "desc"))
    if what in ("namesz", "descsz", "type"):
        j = ("namesz", "descsz", "type").index(what)
        fields = list(NHDR.unpack_from(data, s.offset))
        fields[j] = _edge(rng, "I", fields[j])
        NHDR.pack_into(data, s.offset, *fields)
        return f"note@{s.offset:#x}.{what}={fields[j]:#x}"
    lo = s.offset + (12 if what == "name" else 20)
    hi = s.offset + s.filesz
    if hi <= lo:
        return "note (empty)"
    p = rng.randrange(lo, hi)
    # desc of MFT1: version, entry count, names, types, flags: any byte, or an edge u32
    if rng.random() < 0.5 and p + 4 <= hi:
        struct.pack_into("<I", data, p, _edge(rng, "I", struct.unpack_from("<I", data, p)[0]))
        return f"note@{s.offset:#x} {what} u32 at {p:#x}"
    data[p] = rng.randrange(256)
    return f"note@{s.offset:#x} {what} byte at {p:#x}={data[p]:#x}"


def mut_bytes(rng, data):
    e = ElfFile(bytes(data))
    end = min(len(data), max(e.phoff + e.phnum * PHDR.size, 64) + 0x400)
    out = []
    for _ in range(rng.randint(1, 8)):
        p = rng.randrange(end)
        data[p] = rng.randrange(256)
        out.append(f"{p:#x}")
    return "bytes at " + ",".join(out)


def mut_truncate(rng, data):
    n = rng.choice((0, 1, 4, 16, 63, 64, 100, rng.randrange(len(data)),
                    len(data) - 1, len(data) // 2))
    del data[n:]
    return f"truncated to {n}"


MUTATORS = (mut_ehdr, mut_phdr, mut_note, mut_bytes, mut_truncate)


def mutants(app):
    rng = random.Random(SEED)
    originals = {}
    for name in APPS:
        with open(app(name), "rb") as f:
            originals[name] = f.read()
    for i in range(N_MUTANTS):
        name = APPS[i % len(APPS)]
        data = bytearray(originals[name])
        how = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if len(data) < 64:
                break
            try:
                how.append(rng.choice(MUTATORS)(rng, data))
            except (ValueError, IndexError, struct.error):
                how.append("(mutator skipped: headers already broken)")
        yield i, name, bytes(data), "; ".join(how)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def test_loader_mutants(app, tmp_path):
    counts = {"accepted": 0, "refused": 0}
    messages = set()
    old = signal.signal(signal.SIGALRM, _alarm)
    mem = GuestMemory(32 << 20)
    try:
        for i, name, data, how in mutants(app):
            p = tmp_path / f"m{i}.hvt"
            p.write_bytes(data)
            signal.setitimer(signal.ITIMER_REAL, 5)
            try:
                img = read_image(str(p))
                load(img, mem)
                counts["accepted"] += 1
            except ExecutableError as e:
                msg = str(e)
                assert "\n" not in msg and msg.startswith(f"{p}: "), (how, msg)
                assert len(msg) < 300, (how, msg)
                messages.add(msg.split(": ", 1)[1])
                counts["refused"] += 1
            except Hang:
                pytest.fail(f"mutant {i} of {name} ({how}) hung the loader")
            except Exception as e:
                pytest.fail(f"mutant {i} of {name} ({how}): {type(e).__name__}: {e}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            os.unlink(p)
    finally:
        signal.signal(signal.SIGALRM, old)
        mem.close()
    print(f"loader mutants: {counts['refused']} refused with one line "
          f"({len(messages)} distinct reasons), {counts['accepted']} accepted")
    assert sum(counts.values()) == N_MUTANTS >= 300
    # the mutations reach many different rules, and some mutants are still valid
    assert counts["refused"] >= N_MUTANTS // 2 and len(messages) >= 15, (counts, messages)


@pytest.mark.kvm
def test_loader_mutants_through_ukdbg_run(app, tmp_path):
    """A batch of the same mutants, through the real CLI: one line or a guest run."""
    batch = [m for m in mutants(app)][::12]
    for i, name, data, how in batch:
        p = tmp_path / f"m{i}.hvt"
        p.write_bytes(data)
        r = ukdbg("run", "--mem=32", "--no-core", "--no-control", "--timeout=3", p,
                  timeout=30)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (how,
                                                                                  r.stderr)
        if r.returncode == 1:
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"ukdbg: {p}: "), (how, r.stderr)
        else:
            # accepted: the guest ran (its own status, a diagnosed crash, or --timeout)
            assert r.returncode in (0, 124, 255) or r.returncode >= 128, (how, r.stderr)
