"""The layers stay visible: who may import whom (docs/architecture.md), and what the
plain `ukdbg run` path may load."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "ukdbg")

# package -> ukdbg packages it may import (besides itself and the leaf modules below)
LEAVES = {"ukdbg.errors", "ukdbg", "ukdbg.native"}
ALLOWED = {
    "ukdbg.native": set(),          # C calls through _ctypes: a leaf any layer may use
    "ukdbg.kvm": set(),
    "ukdbg.arch": set(),
    "ukdbg.target": {"ukdbg.arch"},
    "ukdbg.elf": set(),
    "ukdbg.tender": {"ukdbg.kvm", "ukdbg.arch", "ukdbg.target", "ukdbg.elf", "ukdbg.gdbstub",
                     "ukdbg.coredump", "ukdbg.inspect", "ukdbg.control"},
    "ukdbg.gdbstub": {"ukdbg.arch", "ukdbg.target", "ukdbg.elf"},
    "ukdbg.coredump": {"ukdbg.arch", "ukdbg.target", "ukdbg.elf"},
    "ukdbg.inspect": {"ukdbg.arch", "ukdbg.target", "ukdbg.elf", "ukdbg.coredump",
                      "ukdbg.gdbstub"},
    "ukdbg.control": {"ukdbg.target", "ukdbg.tender"},
    # Live debugging drives the tender's machine; the tender never reaches back.
    "ukdbg.debugger": {"ukdbg.kvm", "ukdbg.arch", "ukdbg.target", "ukdbg.elf", "ukdbg.gdbstub",
                       "ukdbg.tender"},
    # Reverse execution drives the debugger (and the replayer's input cursor).
    "ukdbg.reverse": {"ukdbg.kvm", "ukdbg.arch", "ukdbg.target", "ukdbg.elf", "ukdbg.tender",
                      "ukdbg.debugger", "ukdbg.replay"},
    # The composition root (ukdbg run) wires tender and debugger features together.
    "ukdbg.run": {"ukdbg.target", "ukdbg.tender", "ukdbg.debugger", "ukdbg.replay",
                  "ukdbg.reverse"},
    # Record and replay (issue 10): hooks on the tender's machine, driven like live.
    "ukdbg.replay": {"ukdbg.arch", "ukdbg.target", "ukdbg.elf", "ukdbg.tender",
                     "ukdbg.run"},
}
# Packages that drive the tender: it must never import them, even lazily or by name.
DRIVERS = ("ukdbg.debugger", "ukdbg.replay", "ukdbg.reverse")


def modules():
    for dirpath, _dirs, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def imports_of(name, path):
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[:len(base) - node.level + 1]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for a in node.names:
                yield f"{mod}.{a.name}"


def layer(mod):
    parts = mod.split(".")
    if len(parts) >= 2 and f"ukdbg.{parts[1]}" in ALLOWED | {d: () for d in DRIVERS}:
        return f"ukdbg.{parts[1]}"
    return None


def names_in_strings(path):
    """Dotted ukdbg module names written as string literals (`__import__` tables)."""
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith("ukdbg."):
            yield node.value


def layer_graph():
    """layer -> layers it imports (every import, top-level or lazy)."""
    graph = {}
    for name, path in modules():
        mine = layer(name)
        if mine is None:
            continue
        for imp in imports_of(name, path):
            other = layer(imp) if imp.startswith("ukdbg") else None
            if other is not None and other != mine:
                graph.setdefault(mine, set()).add(other)
    return graph


def test_import_rules():
    bad = []
    for name, path in modules():
        mine = layer(name)
        if mine is None:
            continue
        for imp in imports_of(name, path):
            if not imp.startswith("ukdbg"):
                continue
            other = layer(imp)
            if other is None or other == mine or imp in LEAVES or other in LEAVES:
                continue
            if other not in ALLOWED[mine]:
                bad.append(f"{name} imports {imp}")
    assert not bad, "layering violations:\n" + "\n".join(sorted(set(bad)))


def test_the_tender_never_imports_its_drivers():
    """tender/ runs the guest; debugger/ (and replay/) drive it. One way only: no
    import, lazy import or module name in a string from tender to them."""
    bad = []
    for name, path in modules():
        if not name.startswith("ukdbg.tender"):
            continue
        for imp in list(imports_of(name, path)) + list(names_in_strings(path)):
            if imp.startswith(DRIVERS):
                bad.append(f"{name} -> {imp}")
    assert not bad, "the tender reaches back into a driver:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycle_through_the_drivers():
    """No chain of imports leads from a driver package back into itself (for instance
    debugger -> tender -> ... -> debugger)."""
    graph = layer_graph()
    for start in DRIVERS:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            n = todo.pop()
            assert n != start, f"import cycle through {start}"
            if n not in seen:
                seen.add(n)
                todo.extend(graph.get(n, ()))


def test_cycle_check_sees_a_back_import(monkeypatch):
    """The two checks above fail on the cycle they exist for."""
    real = imports_of

    def with_back_import(name, path):
        yield from real(name, path)
        if name == "ukdbg.tender.endings":
            yield "ukdbg.debugger.live_target"
    monkeypatch.setitem(globals(), "imports_of", with_back_import)
    with pytest.raises(AssertionError, match="cycle through ukdbg.debugger"):
        test_no_import_cycle_through_the_drivers()
    with pytest.raises(AssertionError, match="reaches back"):
        test_the_tender_never_imports_its_drivers()


def test_only_the_tender_touches_kvm():
    """And the debugger and reverse execution, which drive the vCPU (debug and MMIO
    exits, vCPU state, dirty logs)."""
    for name, path in modules():
        if name.startswith(("ukdbg.kvm", "ukdbg.tender", "ukdbg.debugger", "ukdbg.reverse")):
            continue
        for imp in imports_of(name, path):
            assert not imp.startswith("ukdbg.kvm"), f"{name} imports {imp}"


@pytest.mark.kvm
@pytest.mark.parametrize("guest", ["hello", "banner"])
def test_plain_run_path_loads_only_the_standard_library(app, guest, tmp_path):
    """`ukdbg run APP` must not load the inspection/debug libraries or heavy stdlib
    modules: they would cost most of the start-up budget (bench/boot.py). `hello` ends
    before the control socket's timer fires; `banner` runs past it, so the socket is
    open (and must still have loaded nothing heavy: json waits for a request)."""
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    # The sandbox's compiled filter is cached after the first run (ukdbg/sandbox.py):
    # measure the steady state, as every run but the first one sees it.
    subprocess.run([sys.executable, "-m", "ukdbg", "run", app("hello")], cwd=ROOT,
                   capture_output=True, check=True, env=env)
    # main() ends `run` with os._exit: call run_main directly. The monitor is confined
    # afterwards (no dup2): the module list goes to stderr, the guest's output to null.
    code = (
        "import sys\n"
        f"__import__('ukdbg.run').run.run_main([{app(guest)!r}])\n"
        "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, env=env).stderr
    out = err.split("MODULES ", 1)[1].split()
    assert "ukdbg.sandbox" in out and "pyseccomp" not in out
    if guest == "banner":
        assert "ukdbg.tender.modules.control" in out
        assert "ukdbg.tender.modules.control_listener" in out, "the socket did not open"
    heavy = ("rich", "elftools", "capstone", "prompt_toolkit", "pygdbmi", "ctypes", "enum",
             "re", "json", "argparse", "threading", "socket", "dataclasses", "inspect",
             "typing", "pathlib", "asyncio", "logging")
    loaded = sorted(m for m in out if m.split(".")[0] in heavy)
    assert not loaded, f"the plain run path loaded {loaded}"
