"""ukdbg/preload.py: the modules every `ukdbg run` imports, run from one cached file.

A plain run imports ~38 of ukdbg's modules. Through the import system each one costs
~60-80 us besides its own code (a path search, a .pyc opened, read and validated, the
import lock, a spec): ~2.5 ms of the ~6 ms start-up budget (bench/boot.py). So
`ukdbg run` (cli.py) runs their code objects from one marshal file instead, in
dependency order, as CPython runs its own frozen start-up modules. The modules are the
same objects an import makes (__file__, __spec__, __loader__, parent attributes).

The file (ukdbg/__pycache__/runpath.<python tag>.bin) is validated like a .pyc: the
interpreter's bytecode magic, then each source's size and mtime (one stat each). Any
change, a missing, foreign or malformed file: load() returns False and the normal
import system runs; the file is rebuilt (before the run: the sandbox refuses writes
later) if the directory is writable. The dependency order comes from the sources'
module-level imports (ast, only when building); a cycle among them is refused
(build() raises, the run imports normally, and tests/unit/test_preload.py fails).
`python -X importtime`, -O and UKDBG_NO_PRELOAD=1 skip it.
"""

import marshal
import os
import sys

# The roots: what a plain `ukdbg run` always imports (run.py's always-on MODULES, the
# vCPU, the sandbox, and traps.py's DebugControl at the first hypercall). Their
# module-level imports inside ukdbg are added. Not the control socket's listener: it
# loads only when its timer fires, in runs that last over 10 ms.
ROOTS = ("ukdbg.cli", "ukdbg.run", "ukdbg.kvm.vm", "ukdbg.kvm.vcpu",
         "ukdbg.tender.modules.core", "ukdbg.tender.traps",
         "ukdbg.tender.modules.dumpcore", "ukdbg.tender.modules.report",
         "ukdbg.tender.modules.control", "ukdbg.sandbox", "ukdbg.native",
         "ukdbg.tender.debug")
# In the file too, but run only when imported: what runs over 10 ms need (the control
# socket's listener), served by a finder from the same mapping (~0.15 ms less than
# the import system's search and .pyc).
DEFERRED = ("ukdbg.tender.modules.control_listener",)

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
TAG = b"UKP2"


def cache_path() -> str:
    tag = sys.implementation.cache_tag or "none"
    return os.path.join(PKG_DIR, "__pycache__", f"runpath.{tag}.bin")


def _magic() -> bytes:
    return sys.modules["_frozen_importlib_external"].MAGIC_NUMBER


def enabled() -> bool:
    # Not under -O: the cached code keeps its asserts, like the .pyc of level 0.
    return ("importtime" not in sys._xoptions and not os.environ.get("UKDBG_NO_PRELOAD")
            and not sys.flags.optimize)


def load(path=None) -> bool:
    """Run the cached modules not imported yet. False (nothing run) when the file is
    missing, stale or not trustworthy: the caller imports normally."""
    opened = _open(path or cache_path())
    if opened is None:
        return False
    mm, index, base = opened
    bootstrap = sys.modules["_frozen_importlib"]
    loader_cls = sys.modules["_frozen_importlib_external"].SourceFileLoader
    module = type(sys)
    mods = sys.modules
    later = {}
    try:
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
    """(mapping, index, offset of the code) if the file is ours and every source is
    unchanged, else None. index: [(name, path, is_package, offset, size)].

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
        magic, stamps, index = marshal.loads(os.pread(fd, n, 8))
        if magic != _magic():
            return None
        for p, size, mtime in stamps:
            s = os.stat(p)
            if s.st_size != size or s.st_mtime_ns != mtime:
                return None
        base = 8 + n
        for _name, _path, _pkg, off, size in index:
            if off < 0 or size <= 0 or base + off + size > st.st_size:
                return None
        import mmap
        return mmap.mmap(fd, st.st_size, mmap.MAP_PRIVATE, mmap.PROT_READ), index, base
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)


# --- building (only when the file is missing or stale) ---------------------------------
def _source(name: str):
    """(path, is_package) of module `name` under ukdbg/, or None."""
    rel = os.path.join(os.path.dirname(PKG_DIR), *name.split("."))
    if os.path.isfile(os.path.join(rel, "__init__.py")):
        return os.path.join(rel, "__init__.py"), True
    if os.path.isfile(rel + ".py"):
        return rel + ".py", False
    return None


def _module_imports(tree, name: str, is_pkg: bool) -> list:
    """ukdbg modules that `name`'s module-level code imports (not function bodies)."""
    import ast
    package = name if is_pkg else name.rpartition(".")[0]
    found = []

    def walk(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    found.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[:len(up) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                parts = base.split(".")
                found.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
                found.extend(f"{base}.{a.name}" for a in node.names)
            walk(ast.iter_child_nodes(node))
    walk(tree.body)
    return [n for n in found if n.split(".")[0] == "ukdbg" and _source(n)]


def _without_docstrings(tree):
    """The module without its docstrings (as -OO, but asserts stay): ~11% less code to
    unmarshal and keep at every run. Nothing on the run path reads __doc__; an import
    of the same module outside `ukdbg run` has them."""
    import ast
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                             ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and \
                    isinstance(body[0].value, ast.Constant) and \
                    isinstance(body[0].value.value, str):
                if len(body) > 1:
                    del body[0]
                else:
                    body[0] = ast.copy_location(ast.Pass(), body[0])
    return tree


def build(path=None) -> list:
    """Compile the roots and their module-level ukdbg imports into the cache file, in
    dependency order (parents before children, imports before importers). Returns
    the module names in that order. Raises ValueError on an import cycle."""
    import ast
    order, state, stamps, code = [], {}, [], {}

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise ValueError("import cycle: " + " -> ".join(chain + [name]))
        state[name] = "open"
        src, is_pkg = _source(name)
        with open(src, "rb") as f:
            st = os.fstat(f.fileno())    # before the read: a change during it is stale
            text = f.read()
        tree = ast.parse(text, src)
        if "." in name:
            visit(name.rpartition(".")[0], chain + [name])     # and so every ancestor
        for dep in _module_imports(tree, name, is_pkg):
            if dep != name and not name.startswith(dep + "."):
                visit(dep, chain + [name])
        code[name] = (src, is_pkg, compile(_without_docstrings(tree), src, "exec",
                                           dont_inherit=True, optimize=0))
        stamps.append((src, st.st_size, st.st_mtime_ns))
        state[name] = "done"
        order.append(name)

    for root in ROOTS + DEFERRED:
        visit(root, [])
    me = os.path.abspath(__file__)
    st = os.stat(me)
    stamps.append((me, st.st_size, st.st_mtime_ns))       # ROOTS live here
    index, blobs, off = [], [], 0
    for n in order:
        src, is_pkg, c = code[n]
        blobs.append(marshal.dumps(c))
        index.append((n, src, is_pkg, off, len(blobs[-1])))
        off += len(blobs[-1])
    head = marshal.dumps((_magic(), stamps, index))
    data = TAG + len(head).to_bytes(4, "little") + head + b"".join(blobs)
    path = path or cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from .files import write_new
    write_new(path, data, 0o644)
    return order


def preload() -> None:
    """cli.py's entry for `ukdbg run`: run the cached modules, or rebuild the cache
    (when its directory is writable) and let the import system run."""
    if not enabled() or load():
        return
    path = cache_path()
    d = os.path.dirname(path)
    if sys.dont_write_bytecode or not os.access(d if os.path.isdir(d) else PKG_DIR,
                                                os.W_OK):
        return
    try:
        build(path)
    except (OSError, ValueError, SyntaxError):
        pass          # the import system reports real errors itself


if __name__ == "__main__":
    print("\n".join(build()))
