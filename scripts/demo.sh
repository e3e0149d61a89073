#!/usr/bin/env bash
# scripts/demo.sh: the built-in demo. Boots a unikernel that crashes deep in a call
# chain, shows what ukdbg reports, then opens the core it left behind.
set -uo pipefail
cd "$(dirname "$0")/.."
UKDBG=${UKDBG:-.venv/bin/ukdbg}
out=$(mktemp -d /tmp/ukdbg-demo.XXXXXX)
app=fixtures/build/recursion.hvt

echo "== ukdbg run $app   (a unikernel that recurses 32 levels, then writes to NULL)"
"$UKDBG" run --mem=64 --core-dir "$out" "$app"
echo "== exit status: $?"
core=$(ls "$out"/*.core 2>/dev/null | head -1)
if [ -n "$core" ]; then
    echo
    echo "== ukdbg core $core -c 'info; bt'"
    "$UKDBG" core "$core" -c 'info; bt' || true
    echo
    echo "== gdb -batch $app $core -ex bt"
    gdb -q -batch -nx "$app" "$core" -ex 'bt 6' 2>&1 | tail -8
fi
echo
echo "(demo files in $out)"
