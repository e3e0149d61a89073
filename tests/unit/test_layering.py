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
LEAVES = {"ukdbg.errors", "ukdbg"}
ALLOWED = {
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
}


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
    if len(parts) >= 2 and f"ukdbg.{parts[1]}" in ALLOWED:
        return f"ukdbg.{parts[1]}"
    return None


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
            if other is None or other == mine or imp in LEAVES:
                continue
            if other not in ALLOWED[mine]:
                bad.append(f"{name} imports {imp}")
    assert not bad, "layering violations:\n" + "\n".join(sorted(set(bad)))


def test_only_the_tender_touches_kvm():
    for name, path in modules():
        if name.startswith(("ukdbg.kvm", "ukdbg.tender")):
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
    code = (
        "import sys, os\n"
        "from ukdbg.tender.run import run_main\n"
        "fd = os.dup(1); nul = os.open(os.devnull, os.O_WRONLY); os.dup2(nul, 1)\n"
        "try:\n"
        # main() would end `run` with os._exit: call run_main directly instead.
        f"    run_main([{app(guest)!r}])\n"
        "finally:\n"
        "    os.dup2(fd, 1)\n"
        "print(' '.join(sorted(sys.modules)))\n")
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, env=env).stdout.split()
    if guest == "banner":
        assert "ukdbg.tender.modules.control" in out
        assert "ukdbg.tender.modules.control_listener" in out, "the socket did not open"
    heavy = ("rich", "elftools", "capstone", "prompt_toolkit", "pygdbmi", "ctypes", "enum",
             "re", "json", "argparse", "threading", "socket", "dataclasses", "inspect",
             "typing", "pathlib", "asyncio", "logging")
    loaded = sorted(m for m in out if m.split(".")[0] in heavy)
    assert not loaded, f"the plain run path loaded {loaded}"
