#!/usr/bin/env bash
# scripts/setup.sh: everything ukdbg needs, from a fresh machine. Idempotent.
#   - system tools: gcc, make (fixtures), gdb (tests, demo), gdbserver (bench/gdb.py's
#     baseline), libseccomp2 (the sandbox), lldb if the distro has it
#   - a venv in .venv with ukdbg (editable) and its test dependencies
#   - the fixture unikernels (make -C fixtures)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v gdb >/dev/null || need+=(gdb)
command -v gdbserver >/dev/null || need+=(gdbserver)
# libseccomp: the sandbox of `ukdbg run` (pyseccomp loads it; ukdbg/sandbox.py)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || need+=(libseccomp2)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "setup: please install: ${need[*]}" >&2
        exit 1
    fi
fi
# lldb is optional (one lldb test); install it quietly when the distro has it.
if ! command -v lldb >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && [ "${UKDBG_NO_LLDB:-}" = "" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lldb \
        >/dev/null 2>&1 || echo "setup: lldb not available from apt; its test will be skipped"
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -f "$VENV/.ukdbg-installed" ] || [ pyproject.toml -nt "$VENV/.ukdbg-installed" ]; then
    # A current pip writes console scripts that start without importing `re`.
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[test]'
    touch "$VENV/.ukdbg-installed"
fi
# Installed packages have their bytecode compiled; an editable one needs it done.
"$VENV/bin/python" -m compileall -q ukdbg >/dev/null || true
# And the run path's one-file module cache (ukdbg/preload.py; rebuilt by `ukdbg run`
# itself when stale, unless PYTHONDONTWRITEBYTECODE is set).
"$VENV/bin/python" -m ukdbg.preload >/dev/null || true
make -s -C fixtures
