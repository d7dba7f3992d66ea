#!/usr/bin/env bash
# VNN-COMP: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes sat | unsat | timeout | unknown on the first line of RESULTS_FILE, the counterexample
# after sat.  All cores are used (OpenMP/MKL threads = cores) for a fair CPU run.
set -uo pipefail

VERSION_STRING=v1
if [ "$#" -ne 6 ]; then
    echo "usage: run_instance.sh $VERSION_STRING CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
if [ "$1" != "$VERSION_STRING" ]; then
    echo "run_instance.sh: expected version string '$VERSION_STRING', got '$1'" >&2
    exit 1
fi
CATEGORY=$2
ONNX=$3
VNNLIB=$4
RESULTS_FILE=$5
TIMEOUT=$6
if ! [[ "$TIMEOUT" =~ ^[0-9]+([.][0-9]*)?$ ]]; then
    echo "run_instance.sh: TIMEOUT must be a number of seconds, got '$TIMEOUT'" >&2
    exit 1
fi

TOOL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${VERIFIER_PYTHON:-python3}
export PYTHONPATH="$TOOL_DIR${PYTHONPATH:+:$PYTHONPATH}"
PIDFILE=${VERIFIER_PIDFILE:-${TMPDIR:-/tmp}/relu-verifier-run-instance-$(id -u).pid}

CORES=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
export OMP_NUM_THREADS=$CORES MKL_NUM_THREADS=$CORES OPENBLAS_NUM_THREADS=$CORES NUMEXPR_NUM_THREADS=$CORES

echo "run_instance.sh: category $CATEGORY, timeout ${TIMEOUT}s, $CORES threads" >&2
rm -f "$RESULTS_FILE"

# The CLI answers 'timeout' by itself within a second of TIMEOUT; as a backstop, `timeout`
# (leader of its own process group) kills the whole group 10 s later.
HARD_LIMIT=$(awk -v t="$TIMEOUT" 'BEGIN { print t + 10 }')
timeout --signal=TERM --kill-after=2 "$HARD_LIMIT" \
    "$PYTHON" -m verifier.cli "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --out "$RESULTS_FILE" >/dev/null &
CHILD=$!
echo "$CHILD" >"$PIDFILE"
trap 'kill -KILL -- "-$CHILD" 2>/dev/null; rm -f "$PIDFILE"; exit 143' TERM INT
wait "$CHILD"
STATUS=$?
rm -f "$PIDFILE"

FIRST=$(head -n 1 "$RESULTS_FILE" 2>/dev/null | tr -d '[:space:]')
case "$FIRST" in
    sat | unsat | timeout | unknown) ;;
    *)
        if [ "$STATUS" = 124 ] || [ "$STATUS" = 137 ]; then
            echo "run_instance.sh: killed at the hard limit (${HARD_LIMIT}s)" >&2
            echo "timeout" >"$RESULTS_FILE"
        else
            echo "run_instance.sh: no verdict (first line '${FIRST}', exit status $STATUS): unknown" >&2
            echo "unknown" >"$RESULTS_FILE"
        fi
        ;;
esac
exit 0
