#!/usr/bin/env bash
# VNN-COMP: install_tool.sh v1
# Installs the verifier and its Python dependencies into $VERIFIER_PYTHON (default python3).
set -euo pipefail

VERSION_STRING=v1
if [ "$#" -ne 1 ] || [ "$1" != "$VERSION_STRING" ]; then
    echo "install_tool.sh: expected one argument, the version string '$VERSION_STRING', got '$*'" >&2
    exit 1
fi

TOOL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${VERIFIER_PYTHON:-python3}

if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-pip
    else
        echo "install_tool.sh: $PYTHON with pip is required" >&2
        exit 1
    fi
fi

echo "installing the verifier from $TOOL_DIR with $("$PYTHON" --version)"
"$PYTHON" -m pip install --quiet "$TOOL_DIR"
"$PYTHON" -m verifier.cli --help >/dev/null
echo "install_tool.sh: done"
