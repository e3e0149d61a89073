"""ukdbg/tender/manifest.py: the Solo5 MFT1 manifest: parse, validate (§14), host copy."""

from ..errors import ExecutableError
from . import abi


class Device:
    """One manifest entry. `index` is the guest's handle."""

    __slots__ = ("index", "name", "type", "attached", "capacity", "block_size", "mac", "mtu",
                 "host")

    def __init__(self, index: int, name: str, type_: int):
        self.index = index
        self.name = name
        self.type = type_
        self.attached = False
        self.capacity = 0
        self.block_size = 0
        self.mac = b"\0" * 6
        self.mtu = 0
        self.host = None        # the module's backing object (file, tap)

    @property
    def type_name(self) -> str:
        return abi.MFT_TYPE_NAMES.get(self.type, f"type {self.type:#x}")


class Manifest:
    def __init__(self, raw: bytes):
        """Validate `raw` (the desc payload) exactly like Solo5's mft_validate()."""
        if len(raw) < abi.MFT_HDR.size:
            raise ExecutableError("Solo5 manifest is invalid: too short")
        version, entries = abi.MFT_HDR.unpack_from(raw, 0)
        if version != abi.MFT_VERSION:
            raise ExecutableError(f"Solo5 manifest is invalid: version {version}, expected 1")
        if not 1 <= entries <= abi.MFT_MAX_ENTRIES:
            raise ExecutableError(f"Solo5 manifest is invalid: {entries} entries "
                                  f"(allowed 1-{abi.MFT_MAX_ENTRIES})")
        if len(raw) != abi.MFT_HDR.size + entries * abi.MFT_ENTRY_SIZE:
            raise ExecutableError("Solo5 manifest is invalid: size does not match its "
                                  f"{entries} entries")
        self.raw = bytearray(raw)
        self.devices = []
        for i in range(entries):
            off = 8 + i * abi.MFT_ENTRY_SIZE
            name = raw[off:off + abi.MFT_NAME_SIZE]
            if name[-1] != 0:
                raise ExecutableError(f"Solo5 manifest is invalid: entry {i} name is not "
                                      "NUL-terminated")
            type_ = int.from_bytes(raw[off + 68:off + 72], "little")
            if raw[off + 96]:
                raise ExecutableError(f"Solo5 manifest is invalid: entry {i} is marked "
                                      "attached in the file")
            nm = name.split(b"\0", 1)[0].decode("latin-1")
            if i == 0:
                if type_ != abi.MFT_RESERVED_FIRST or nm:
                    raise ExecutableError("Solo5 manifest is invalid: entry 0 is not the "
                                          "reserved entry")
                continue
            self.devices.append(Device(i, nm, type_))

    def find(self, name: str):
        for d in self.devices:
            if d.name == name:
                return d
        return None

    def host_copy(self) -> bytes:
        """The manifest as the guest must see it: device facts filled in, attached=1."""
        out = bytearray(self.raw)
        for d in self.devices:
            off = 8 + d.index * abi.MFT_ENTRY_SIZE
            if d.type == abi.MFT_DEV_BLOCK_BASIC:
                out[off + 72:off + 80] = d.capacity.to_bytes(8, "little")
                out[off + 80:off + 82] = d.block_size.to_bytes(2, "little")
            elif d.type == abi.MFT_DEV_NET_BASIC:
                out[off + 72:off + 78] = d.mac
                out[off + 78:off + 80] = d.mtu.to_bytes(2, "little")
            fd = getattr(d.host, "fd", -1) if d.host is not None else -1
            out[off + 88:off + 96] = (fd & 0xFFFFFFFF).to_bytes(4, "little") + b"\0" * 4
            out[off + 96] = 1 if d.attached else 0
        return bytes(out)
