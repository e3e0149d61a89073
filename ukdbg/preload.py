"""ukdbg/preload.py: builds the file from which `ukdbg run` runs its modules.

A plain run imports ~38 of ukdbg's modules. Through the import system each one costs
~60-80 us besides its own code (a path search, a .pyc opened, read and validated, the
import lock, a spec): ~2.5 ms of the ~6 ms start-up budget (bench/boot.py). So
`ukdbg run` (ukdbg.main) runs their code objects from one marshal file instead, in
dependency order, as CPython runs its own frozen start-up modules. The modules are the
same objects an import makes (__file__, __spec__, __loader__, parent attributes). The
stdlib's C modules they import are loaded first, from the files the import system
found when the file was built (~0.35 ms less than four searches along sys.path).

The file (ukdbg/__pycache__/runpath.<python tag>.bin) is validated like a .pyc: the
interpreter's bytecode magic, then each source's and C module's size and mtime (one
stat each), and each C module's directory must be on sys.path. Any change, a missing,
foreign or malformed file: the reader (ukdbg/__init__.py, the one module imported
anyway) returns False and the normal import system runs; the file is rebuilt (before
the run: the sandbox refuses writes later) if the directory is writable. The
dependency order comes from the sources' module-level imports (ast, only when
building); a cycle among them is refused (build() raises, the run imports normally,
and tests/unit/test_preload.py fails). `python -X importtime`, -O and
UKDBG_NO_PRELOAD=1 skip it.
"""

import marshal
import os

from . import DEFERRED, PKG_DIR, TAG, _load as load, _magic, cache_path  # noqa: F401
from . import load_run_path as preload  # noqa: F401  (the entry's name in older trees)

# The roots: what a plain `ukdbg run` always imports (run.py's always-on MODULES, the
# vCPU, the sandbox, and traps.py's DebugControl at the first hypercall). Their
# module-level imports inside ukdbg are added. Not the control socket's listener: it
# loads only when its timer fires, in runs that last over 10 ms (ukdbg.DEFERRED).
ROOTS = ("ukdbg.cli", "ukdbg.run", "ukdbg.kvm.vm", "ukdbg.kvm.vcpu",
         "ukdbg.tender.modules.core", "ukdbg.tender.traps",
         "ukdbg.tender.modules.dumpcore", "ukdbg.tender.modules.report",
         "ukdbg.tender.modules.control", "ukdbg.sandbox", "ukdbg.native",
         "ukdbg.tender.debug")
# The C modules of the standard library that the roots import (checked by
# tests/unit/test_preload.py against a real run). One that is built into the
# interpreter, or missing, is left to the import system.
EXTENSIONS = ("_struct", "mmap", "fcntl", "_ctypes")


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
    out = path or cache_path()
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
    exts = []
    for ext, so in _extensions():
        st = os.stat(so)
        stamps.append((so, st.st_size, st.st_mtime_ns))
        exts.append((ext, so))
    index, blobs, off = [], [], 0
    for n in order:
        src, is_pkg, c = code[n]
        blobs.append(marshal.dumps(c))
        index.append((n, src, is_pkg, off, len(blobs[-1])))
        off += len(blobs[-1])
    head = marshal.dumps((_magic(), stamps, exts, index))
    data = TAG + len(head).to_bytes(4, "little") + head + b"".join(blobs)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    from .files import write_new
    write_new(out, data, 0o644)
    return order


def _extensions() -> list:
    """[(name, file)] of EXTENSIONS that this interpreter loads from a file."""
    from importlib.machinery import ExtensionFileLoader
    from importlib.util import find_spec
    out = []
    for name in EXTENSIONS:
        spec = find_spec(name)
        if spec is not None and isinstance(spec.loader, ExtensionFileLoader) \
                and spec.origin and spec.origin.startswith("/"):
            out.append((name, spec.origin))
    return out


if __name__ == "__main__":
    print("\n".join(build()))
