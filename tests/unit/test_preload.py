"""ukdbg/preload.py: the run path's modules from one cached file are the modules an
import makes, in an order that works, and a stale, foreign or broken file is never run."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _copy_tree(tmp_path):
    """A private copy of the package (its cache file is ours to break)."""
    dst = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "ukdbg"), dst / "ukdbg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _py(src, code, *args, env=None):
    e = dict(os.environ, PYTHONPATH=str(src))
    e.pop("UKDBG_NO_PRELOAD", None)
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, cwd=str(src), env=e)


BUILD = "from ukdbg import preload; print(' '.join(preload.build()))"
LOAD = """
import sys
from ukdbg import preload
ok = preload.load()
print("LOADED" if ok else "NOT", " ".join(sorted(m for m in sys.modules if m.startswith("ukdbg"))))
"""


def test_the_order_puts_parents_and_imports_first(tmp_path):
    src = _copy_tree(tmp_path)
    r = _py(src, BUILD)
    assert r.returncode == 0, r.stderr
    order = r.stdout.split()
    from ukdbg import preload
    for root in preload.ROOTS:
        assert root in order
    pos = {n: i for i, n in enumerate(order)}
    for n in order:
        if "." in n:
            assert pos[n.rpartition(".")[0]] < pos[n], n
    # e.g. machine.py's module-level imports run before it
    for dep in ("ukdbg.kvm.memory", "ukdbg.kvm.system", "ukdbg.tender.events"):
        assert pos[dep] < pos["ukdbg.tender.machine"]


def test_loaded_modules_are_what_an_import_makes(tmp_path):
    src = _copy_tree(tmp_path)
    assert _py(src, BUILD).returncode == 0
    code = """
import sys
from ukdbg import preload
assert preload.load()
import ukdbg.tender.machine as mach
from ukdbg.tender import machine
import importlib
assert mach is machine is sys.modules["ukdbg.tender.machine"]
assert machine.__file__.endswith("ukdbg/tender/machine.py"), machine.__file__
assert machine.__spec__.name == "ukdbg.tender.machine" and machine.__package__ == "ukdbg.tender"
assert sys.modules["ukdbg.tender"].__path__[0].endswith("ukdbg/tender")
assert sys.modules["ukdbg.tender"].machine is machine
assert machine.__loader__.get_source("ukdbg.tender.machine").startswith('\"\"\"')
# a module outside the cache still imports normally, relative imports included
import ukdbg.tender.view
# the cached code's file names give real tracebacks
assert machine.build_machine.__code__.co_filename == machine.__file__
print("OK")
"""
    r = _py(src, code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_a_changed_source_is_not_run_from_the_cache(tmp_path):
    src = _copy_tree(tmp_path)
    assert _py(src, BUILD).returncode == 0
    r = _py(src, LOAD)
    assert r.stdout.startswith("LOADED") and "ukdbg.tender.machine" in r.stdout
    target = src / "ukdbg" / "tender" / "abi.py"
    target.write_text(target.read_text() + "\nCHANGED = 1\n")
    r = _py(src, LOAD)
    assert r.stdout.startswith("NOT"), r.stdout
    assert "ukdbg.tender.machine" not in r.stdout      # nothing half-loaded
    # `ukdbg run`'s entry rebuilds it, and the next run uses the new code
    r = _py(src, "from ukdbg import preload; preload.preload()")
    assert r.returncode == 0, r.stderr
    r = _py(src, LOAD + "\nimport ukdbg.tender.abi as a; print('CHANGED', a.CHANGED)")
    assert r.stdout.startswith("LOADED") and "CHANGED 1" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("damage", ["truncate", "garbage", "group-writable", "symlink"])
def test_a_broken_or_foreign_cache_file_is_ignored(tmp_path, damage):
    src = _copy_tree(tmp_path)
    assert _py(src, BUILD).returncode == 0
    path = next((src / "ukdbg" / "__pycache__").glob("runpath.*.bin"))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "group-writable":
        os.chmod(path, 0o664)
    else:
        real = tmp_path / "elsewhere.bin"
        real.write_bytes(data)
        path.unlink()
        path.symlink_to(real)
    r = _py(src, LOAD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NOT"), r.stdout


def test_no_cache_without_write_permission_or_with_dont_write_bytecode(tmp_path):
    src = _copy_tree(tmp_path)
    r = _py(src, "from ukdbg import preload; preload.preload()",
            env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr
    assert not list((src / "ukdbg").glob("__pycache__/runpath.*"))


def test_an_import_cycle_is_refused(tmp_path):
    src = _copy_tree(tmp_path)
    abi = src / "ukdbg" / "tender" / "abi.py"        # machine.py imports abi
    abi.write_text(abi.read_text() + "\nfrom . import machine  # noqa\n")
    r = _py(src, BUILD)
    assert r.returncode != 0 and "import cycle" in r.stderr, r.stderr
    # and `ukdbg run`'s entry shrugs: the import system runs (and reports real errors)
    r = _py(src, "from ukdbg import preload; preload.preload(); print('ran')")
    assert r.returncode == 0 and "ran" in r.stdout, r.stderr


@pytest.mark.kvm
def test_ukdbg_run_uses_it_and_loads_nothing_more(app, tmp_path):
    """The same modules and the same output as through the import system; under
    -X importtime the modules are imported (so they show up there)."""
    src = _copy_tree(tmp_path)
    code = """
import os, sys
from ukdbg import cli
real_exit = os._exit
def ex(c):
    sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n"); real_exit(c)
os._exit = ex
cli.main(["run", "--no-control", sys.argv[1]])  # no timing-dependent socket
"""
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    outs = []
    for extra in ({"UKDBG_NO_PRELOAD": "1"}, {}, {}):
        r = _py(src, code, app("hello"), env=dict(env, **extra))
        assert r.returncode == 0, r.stderr
        outs.append((r.stdout, set(r.stderr.split("MODULES ", 1)[1].split())))
    assert list((src / "ukdbg").glob("__pycache__/runpath.*.bin")), "not built"
    assert outs[0][0] == outs[2][0] and "Hello" in outs[0][0]
    normal, preloaded = outs[0][1], outs[2][1]
    assert normal <= preloaded, normal - preloaded
    # beyond it only the cached ukdbg modules --no-control leaves out: no other import
    assert preloaded - normal == {"ukdbg.tender.modules.control"}, preloaded - normal
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code, app("hello")],
                       capture_output=True, text=True, cwd=str(src),
                       env=dict(os.environ, PYTHONPATH=str(src), **env))
    assert r.returncode == 0, r.stderr
    assert any(ln.endswith(" ukdbg.tender.machine") for ln in r.stderr.splitlines())
    # every C module the run loads from a file is one the cache loads by its path
    ext_code = code.replace('" ".join(sorted(sys.modules))', '" ".join(sorted(n for n, m in '
                            'sys.modules.items() if type(getattr(m, "__loader__", None))'
                            '.__name__ == "ExtensionFileLoader"))')
    r = _py(src, ext_code, app("hello"), env=dict(env, UKDBG_NO_PRELOAD="1"))
    assert r.returncode == 0, r.stderr
    from ukdbg import preload
    loaded = set(r.stderr.split("MODULES ", 1)[1].split())
    assert loaded and loaded <= set(preload.EXTENSIONS), loaded - set(preload.EXTENSIONS)


def test_c_modules_are_recorded_and_left_untouched(tmp_path):
    """build() stamps the C modules it names (and writes nothing but its own file);
    a file whose C modules are not on this interpreter's path is not used."""
    src = _copy_tree(tmp_path)
    from ukdbg import preload
    sos = {n: p for n, p in preload._extensions()}
    assert set(sos) <= set(preload.EXTENSIONS)
    before = {p: (os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in sos.values()}
    assert _py(src, BUILD).returncode == 0
    assert {p: (os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in sos.values()} == before
    r = _py(src, LOAD)
    assert r.stdout.startswith("LOADED"), r.stdout + r.stderr
    if sos:
        # as another interpreter of the same bytecode version would see it
        hide = "import sys; sys.path[:] = [p for p in sys.path if 'dynload' not in p]\n"
        r = _py(src, hide + LOAD)
        assert r.stdout.startswith("NOT"), r.stdout + r.stderr


def test_a_deferred_module_runs_from_the_cache_only_when_imported(tmp_path):
    """control_listener is in the file but runs at its import (runs over 10 ms), served
    by a finder that leaves once it has nothing more to serve."""
    src = _copy_tree(tmp_path)
    assert _py(src, BUILD).returncode == 0
    code = """
import sys
from ukdbg import preload
name = "ukdbg.tender.modules.control_listener"
assert preload.DEFERRED == (name,)
assert preload.load()
assert name not in sys.modules
finders = [f for f in sys.meta_path if type(f).__name__ == "_Deferred"]
assert len(finders) == 1 and name in finders[0].codes
import ukdbg.tender.modules.control_listener as cl
assert cl.__file__.endswith("ukdbg/tender/modules/control_listener.py"), cl.__file__
assert cl.__loader__.get_source(name).startswith('\"\"\"')
assert cl.open_control.__code__.co_filename == cl.__file__
assert sys.modules["ukdbg.tender.modules"].control_listener is cl
assert not [f for f in sys.meta_path if type(f).__name__ == "_Deferred"]
print("OK")
"""
    r = _py(src, code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_cached_code_has_no_docstrings_but_its_line_numbers():
    import ast
    from ukdbg import preload
    src = (
        '"""module doc"""\n'
        'def only_doc():\n'
        '    """just a docstring"""\n'
        'def f(x):\n'
        '    """doc"""\n'
        '    return x + 1\n'
        'class C:\n'
        '    """doc"""\n'
        '    def g(self):\n'
        '        raise ValueError("line 10")\n')
    code = compile(preload._without_docstrings(ast.parse(src)), "m.py", "exec")
    ns = {}
    exec(code, ns)
    assert ns.get("__doc__") is None and ns["f"].__doc__ is None and ns["C"].__doc__ is None
    assert ns["only_doc"]() is None and ns["f"](1) == 2
    try:
        ns["C"]().g()
    except ValueError as e:
        assert e.__traceback__.tb_next.tb_lineno == 10
