"""ukdbg/tender/abi.py: the Solo5 hvt guest ABI (include/hvt_abi.h, mft_abi.h) as data.

See ../shared/docs/hvt-abi.md; section numbers below refer to it.
"""

import _struct as struct  # not struct.py: one import less at start-up

HVT_ABI_VERSION = 2
HVT_ABI_TARGET = 1                         # §1: hvt=1, spt=2, virtio=3, muen=4, genode=5, xen=6
ABI_TARGET_NAMES = {1: "hvt", 2: "spt", 3: "virtio", 4: "muen", 5: "genode", 6: "xen"}

# §2 layout
GUEST_MIN_BASE = 0x100000
BOOT_GDT = 0x1000
BOOT_PML4 = 0x2000
BOOT_PDPTE = 0x3000
BOOT_PDE = 0x4000                          # 4 pages: 0x4000-0x7fff
BOOT_PT0 = 0x8000
BOOT_INFO = 0x10000
BOOT_INFO_SIZE = 56
CMDLINE_SIZE = 8192
MEM_MIN = 2 << 20
MEM_MAX = 4 << 30
MEM_ALIGN = 2 << 20
MEM_DEFAULT_MB = 512

# §8 hypercalls
PIO_BASE = 0x500
HC_WALLTIME, HC_PUTS, HC_POLL = 1, 2, 3
HC_BLOCK_WRITE, HC_BLOCK_READ = 4, 5
HC_NET_WRITE, HC_NET_READ = 6, 7
HC_HALT = 8
HC_MAX = 9
HC_NAMES = {1: "walltime", 2: "puts", 3: "poll", 4: "block_write", 5: "block_read",
            6: "net_write", 7: "net_read", 8: "halt"}
HALT_COOKIE_MAX = 512

# §9 structs (offsets as the x86-64 guest sees them)
HC_WALLTIME_ST = struct.Struct("<Q")              # nsecs (out)
HC_PUTS_ST = struct.Struct("<QQ")                 # data, len
HC_POLL_ST = struct.Struct("<QQi4x")              # timeout_nsecs, ready_set (out), ret (out)
HC_BLOCK_ST = struct.Struct("<QQQQi4x")           # handle, offset, data, len, ret
HC_NET_ST = struct.Struct("<QQQi4x")              # handle, data, len, ret
HC_HALT_ST = struct.Struct("<Qi4x")               # cookie, exit_status
# Output fields alone, for in-place updates.
POLL_OUT_OFF, POLL_OUT = 8, struct.Struct("<Qi")  # ready_set, ret
BLOCK_RET_OFF = 32
NET_RET_OFF = 24
NET_LEN_RET_OFF, NET_LEN_RET = 16, struct.Struct("<Qi")
RET_ST = struct.Struct("<i")

SOLO5_R_OK, SOLO5_R_AGAIN, SOLO5_R_EINVAL, SOLO5_R_EUNSPEC = 0, 1, 2, 3

# What a hypercall may write back into guest memory: its struct (results), and for the
# reads the buffer its (data, len) names. Reverse execution's dirty tracking marks these
# (the handlers write through accessors nothing wraps).
_HC_RESULT_ST = {HC_WALLTIME: HC_WALLTIME_ST, HC_POLL: HC_POLL_ST,
                 HC_BLOCK_WRITE: HC_BLOCK_ST, HC_BLOCK_READ: HC_BLOCK_ST,
                 HC_NET_WRITE: HC_NET_ST, HC_NET_READ: HC_NET_ST}


def result_ranges(nr: int, read, gpa: int) -> list:
    """[(gpa, size)] hypercall nr may have written; read(gpa, size) -> bytes reads guest
    memory (ranges are not checked against RAM: the caller clamps them)."""
    st = _HC_RESULT_ST.get(nr)
    if st is None:
        return []
    out = [(gpa, st.size)]
    if nr == HC_BLOCK_READ:
        _h, _off, data, n, _r = st.unpack(read(gpa, st.size))
        out.append((data, n))
    elif nr == HC_NET_READ:
        _h, data, n, _r = st.unpack(read(gpa, st.size))
        out.append((data, n))
    return out
SOLO5_EXIT_ABORT = 255

# §6 struct hvt_boot_info
BOOT_INFO_ST = struct.Struct("<QQQQQIIQ")   # mem_size, kernel_end, cpu_cycle_freq, cmdline,
#                                           # mft, host_features, guest_features, net_ring
assert BOOT_INFO_ST.size == BOOT_INFO_SIZE

# §11 x86 trap frame handed as the HALT cookie
TRAP_FRAME_ST = struct.Struct("<7Q")        # cr2, ec, rip, cs, rflags, rsp, ss

# §13 notes
NOTE_NAME = "Solo5"
NOTE_ABI1 = 0x31494241
NOTE_MFT1 = 0x3154464D
ABI1_MAX_DESC = 32
MFT1_MAX_DESC = 6668
ABI1_ST = struct.Struct("<IIII")

# §14 manifest
MFT_VERSION = 1
MFT_MAX_ENTRIES = 64
MFT_ENTRY_SIZE = 104
MFT_HDR = struct.Struct("<II")
MFT_NAME_SIZE = 68
MFT_DEV_BLOCK_BASIC = 1
MFT_DEV_NET_BASIC = 2
MFT_RESERVED_FIRST = 0x40000000
MFT_TYPE_NAMES = {1: "BLOCK_BASIC", 2: "NET_BASIC", MFT_RESERVED_FIRST: "RESERVED_FIRST"}
