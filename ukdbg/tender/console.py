"""ukdbg/tender/console.py: where the guest's PUTS output goes, and the tail kept of it.

The last 64 KiB are kept for crash reports and cores (the "console tail").
"""

import os

TAIL_BYTES = 64 * 1024


class Console:
    def __init__(self):
        self.fds = [1]          # stdout, plus --console FILE
        self.tail = bytearray()
        self.total = 0
        self.errors = 0

    def write(self, data) -> None:
        for fd in self.fds:
            try:
                os.write(fd, data)
            except OSError:
                # A closed stdout must not kill the guest; the tail still has it.
                self.errors += 1
        t = self.tail
        t += data
        if len(t) > 2 * TAIL_BYTES:
            del t[:-TAIL_BYTES]
        self.total += len(data)

    def last(self, n: int = TAIL_BYTES) -> bytes:
        return bytes(self.tail[-n:])
