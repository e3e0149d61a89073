"""ukdbg: a KVM monitor that runs Solo5 hvt unikernels like processes and debugs them
like processes (gdb stub, ELF cores, a core inspector).

`main` is the `ukdbg` command. Before `ukdbg run` imports anything it runs the run
path's modules from one cached file (built by ukdbg/preload.py, which explains it).
The file's reader lives here, not in a module of its own, because the package is
imported anyway: every further module on the way (cli.py, a reader module) is one
more .pyc to find, read and run, ~0.15 ms each of a 6 ms start-up budget.
"""

import marshal
import os
import sys

__version__ = "0.1.0"

TAG = b"UKP3"
# In the file too, but run only when imported: what runs over 10 ms need (the control
# socket's listener), served by a finder from the same mapping (~0.15 ms less than
# the import system's search and .pyc).
DEFERRED = ("ukdbg.tender.modules.control_listener",)
PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_preloaded = False


def main():
    """The `ukdbg` command (pyproject's console script)."""
    if sys.argv[1:2] == ["run"]:
        # Start-up allocates ~40,000 objects that live until the exit: no collection
        # scans them (~1 ms); run_main(exiting=True) freezes them and turns it back on.
        import gc
        gc.disable()
        load_run_path()
    from .cli import main as cli_main
    return cli_main()


def load_run_path() -> None:
    """`ukdbg run`'s start: run the cached modules, or rebuild the file (when its
    directory is writable) and let the import system run. Once per process."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    if not _enabled() or _load():
        return
    path = cache_path()
    d = os.path.dirname(path)
    if sys.dont_write_bytecode or not os.access(d if os.path.isdir(d) else PKG_DIR,
                                                os.W_OK):
        return
    from . import preload as builder
    try:
        builder.build(path)
    except (OSError, ValueError, SyntaxError, ImportError):
        pass          # the import system reports real errors itself


def cache_path() -> str:
    tag = sys.implementation.cache_tag or "none"
    return os.path.join(PKG_DIR, "__pycache__", f"runpath.{tag}.bin")


def _magic() -> bytes:
    return sys.modules["_frozen_importlib_external"].MAGIC_NUMBER


def _enabled() -> bool:
    # Not under -O: the cached code keeps its asserts, like the .pyc of level 0.
    return ("importtime" not in sys._xoptions and not os.environ.get("UKDBG_NO_PRELOAD")
            and not sys.flags.optimize)


def _load(cache=None) -> bool:
    """Load the file's extension modules, then run its modules not imported yet. False
    (nothing run) when the file is missing, stale or not trustworthy: the caller
    imports normally."""
    opened = _open(cache or cache_path())
    if opened is None:
        return False
    fd, file_size, exts, index, base = opened
    bootstrap = sys.modules["_frozen_importlib"]
    external = sys.modules["_frozen_importlib_external"]
    mods = sys.modules
    later = {}
    try:
        # The stdlib's C modules by their recorded file: no search along sys.path
        # (~0.1 ms each here).
        for name, so in exts:
            if name not in mods:
                spec = bootstrap.ModuleSpec(name, external.ExtensionFileLoader(name, so),
                                            origin=so)
                spec.has_location = True
                bootstrap._load(spec)
        import mmap
        mm = mmap.mmap(fd, file_size, mmap.MAP_PRIVATE, mmap.PROT_READ)
    except (ImportError, OSError):
        return False            # a C module that will not load: the import system's turn
    finally:
        os.close(fd)
    try:
        loader_cls = external.SourceFileLoader
        module = type(sys)
        with memoryview(mm) as view:
            for name, path, is_pkg, off, size in index:
                if name in mods:
                    continue
                if name in DEFERRED:
                    later[name] = bytes(view[base + off:base + off + size]), path
                    continue
                # One module's code at a time, dropped after it ran: the peak stays
                # that of an import (each new page is a fault, 2-4 us here).
                code = marshal.loads(view[base + off:base + off + size])
                parent, _, child = name.rpartition(".")
                loader = loader_cls(name, path)
                spec = bootstrap.ModuleSpec(name, loader, origin=path, is_package=is_pkg)
                spec.has_location = True
                spec.cached = _cached(path)
                m = module(name)
                m.__file__ = path
                m.__loader__ = loader
                m.__spec__ = spec
                m.__cached__ = spec.cached
                if is_pkg:
                    m.__path__ = spec.submodule_search_locations = [path.rpartition("/")[0]]
                    m.__package__ = name
                else:
                    m.__package__ = parent
                mods[name] = m
                try:
                    exec(code, m.__dict__)
                except BaseException:
                    del mods[name]
                    raise
                del code
                if parent:
                    setattr(mods[parent], child, m)
    finally:
        mm.close()
    if later:
        sys.meta_path.insert(0, _Deferred(later))
    return True


def _cached(src: str) -> str:
    """The .pyc path of source src, as importlib's cache_from_source() gives it (~10 us
    through importlib's helpers)."""
    head, _, tail = src.rpartition("/")
    return f"{head}/__pycache__/{tail[:-3]}.{sys.implementation.cache_tag}.pyc"


class _Deferred:
    """The finder and loader of the DEFERRED modules: their code from the cache file
    (as it was validated at start-up), then the normal file loader's attributes."""

    def __init__(self, codes):
        self.codes = codes          # name -> (marshalled code, source path)

    def find_spec(self, name, path=None, target=None):
        if name not in self.codes:
            return None
        src = self.codes[name][1]
        bootstrap = sys.modules["_frozen_importlib"]
        loader = sys.modules["_frozen_importlib_external"].SourceFileLoader(name, src)
        spec = bootstrap.ModuleSpec(name, self, origin=src)
        spec.has_location = True
        spec.loader_state = loader
        spec.cached = _cached(src)
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, m):
        data, _src = self.codes.pop(m.__name__)
        if not self.codes and self in sys.meta_path:
            sys.meta_path.remove(self)
        m.__loader__ = m.__spec__.loader = m.__spec__.loader_state
        exec(marshal.loads(data), m.__dict__)


def _open(path):
    """(fd, size, extensions, index, offset of the code) if the file is ours and every
    file it names is unchanged, else None. extensions: [(name, path)]; index:
    [(name, path, is_package, offset, size)].

    The file is mapped, not read: a read would fault in ~75 fresh heap pages for the
    buffer (2-4 us each on this nested-KVM host); the page cache's pages come in 16 at
    a time."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # A regular file of this user (or root), that no one else may write.
        if (st.st_mode & 0o170000 != 0o100000 or st.st_mode & 0o022
                or st.st_uid not in (os.geteuid(), 0) or st.st_size < 12):
            return None
        head = os.pread(fd, 8, 0)
        n = int.from_bytes(head[4:8], "little")
        if head[:4] != TAG or 8 + n > st.st_size:
            return None
        magic, stamps, exts, index = marshal.loads(os.pread(fd, n, 8))
        if magic != _magic():
            return None
        for p, size, mtime in stamps:
            s = os.stat(p)
            if s.st_size != size or s.st_mtime_ns != mtime:
                return None
        # The C modules this interpreter would find: their directory is on its path
        # (another interpreter of the same bytecode version has its own).
        for _name, p in exts:
            if p.rpartition("/")[0] not in sys.path:
                return None
        base = 8 + n
        for _name, _path, _pkg, off, size in index:
            if off < 0 or size <= 0 or base + off + size > st.st_size:
                return None
        return fd, st.st_size, exts, index, base
    except (OSError, ValueError, EOFError, TypeError):
        pass
    os.close(fd)
    return None
