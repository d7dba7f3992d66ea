#!/usr/bin/env bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Ends what a previous run_instance.sh of this tool may have left running, then checks that the
# model and the property load.  A nonzero exit tells the harness to skip the instance (unsupported).
set -uo pipefail

VERSION_STRING=v1
if [ "$#" -ne 4 ]; then
    echo "usage: prepare_instance.sh $VERSION_STRING CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
if [ "$1" != "$VERSION_STRING" ]; then
    echo "prepare_instance.sh: expected version string '$VERSION_STRING', got '$1'" >&2
    exit 1
fi
CATEGORY=$2
ONNX=$3
VNNLIB=$4

TOOL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${VERIFIER_PYTHON:-python3}
export PYTHONPATH="$TOOL_DIR${PYTHONPATH:+:$PYTHONPATH}"
PIDFILE=${VERIFIER_PIDFILE:-${TMPDIR:-/tmp}/relu-verifier-run-instance-$(id -u).pid}

# The process group that run_instance.sh recorded, if it is still ours and alive.
if [ -f "$PIDFILE" ]; then
    PGID=$(cat "$PIDFILE" 2>/dev/null || true)
    if [[ "$PGID" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$PGID/cmdline" 2>/dev/null | grep -q "verifier.cli"; then
        echo "prepare_instance.sh: ending leftover process group $PGID" >&2
        kill -KILL -- "-$PGID" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
fi

for f in "$ONNX" "$VNNLIB"; do
    if [ ! -r "$f" ]; then
        echo "prepare_instance.sh: cannot read $f" >&2
        exit 1
    fi
done

echo "prepare_instance.sh: category $CATEGORY, checking $ONNX and $VNNLIB"
"$PYTHON" - "$ONNX" "$VNNLIB" <<'PY'
import sys

from verifier.errors import VerifierError
from verifier.onnx_import import load_onnx
from vnnlib.reader import read_spec
from vnnlib.spec import SpecError

try:
    load_onnx(sys.argv[1])
    read_spec(sys.argv[2])
except (VerifierError, SpecError, OSError) as exc:
    print(f"prepare_instance.sh: cannot run this instance: {exc}", file=sys.stderr)
    sys.exit(1)
PY
