"""ukdbg/control/paths.py: where control sockets live: a per-user directory, one per monitor.

$XDG_RUNTIME_DIR/ukdbg, else /run/user/UID/ukdbg, else /tmp/ukdbg-UID; always a real
directory owned by the user with mode 0700, so other users can neither list nor reach
the sockets in it. A socket is named <monitor pid>.sock (mode 0600). The rules the
monitor applies itself are in tender/modules/control_listener.py.
"""

import os

# The monitor needs these when its control socket opens, where every import counts
# (issue 12: 1 ms or less): they live in its listener, which needs no other module.
from ..tender.modules.control_listener import (  # noqa: F401 (re-exported)
    SUFFIX, check_private, ensure_runtime_dir, runtime_dir, socket_path)


def list_sockets(directory=None) -> list:
    """[(pid, path)] of the control sockets in the runtime directory, by pid."""
    d = directory or runtime_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return []
    out = []
    for n in names:
        stem = n[:-len(SUFFIX)]
        if n.endswith(SUFFIX) and stem.isdigit():
            out.append((int(stem), os.path.join(d, n)))
    out.sort()
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
