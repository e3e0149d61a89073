"""ukdbg/control/paths.py: where control sockets live: a per-user directory, one per monitor.

$XDG_RUNTIME_DIR/ukdbg, else /run/user/UID/ukdbg, else /tmp/ukdbg-UID; always a real
directory owned by the user with mode 0700, so other users can neither list nor reach
the sockets in it. A socket is named <monitor pid>.sock (mode 0600). Imported by the
monitor at start-up: `os` only.
"""

import os

SUFFIX = ".sock"


def _owned_dir(path: str, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == uid and (st.st_mode & 0o170000) == 0o040000


def runtime_dir(uid=None) -> str:
    """The directory of this user's control sockets (it may not exist yet)."""
    uid = os.getuid() if uid is None else uid
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/") and _owned_dir(xdg, uid):
        return os.path.join(xdg, "ukdbg")
    run = f"/run/user/{uid}"
    if _owned_dir(run, uid):
        return os.path.join(run, "ukdbg")
    return f"/tmp/ukdbg-{uid}"


def check_private(path: str, uid=None) -> None:
    """Raise OSError unless path is a directory (not a symlink) owned by uid
    and closed to everybody else."""
    uid = os.getuid() if uid is None else uid
    st = os.lstat(path)
    if (st.st_mode & 0o170000) != 0o040000:
        raise OSError(f"{path} is not a directory")
    if st.st_uid != uid:
        raise OSError(f"{path} belongs to uid {st.st_uid}, not {uid}")
    if st.st_mode & 0o077:
        raise OSError(f"{path} has mode {st.st_mode & 0o777:04o}, not 0700")


def ensure_runtime_dir() -> str:
    """Create (mode 0700) and check the runtime directory; returns it."""
    d = runtime_dir()
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    check_private(d)
    return d


def socket_path(pid: int, directory=None) -> str:
    return os.path.join(directory or runtime_dir(), f"{pid}{SUFFIX}")


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
