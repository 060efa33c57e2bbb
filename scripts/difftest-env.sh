#!/usr/bin/env bash
# The Python servers of the differential smuggling test (tests/tests/smuggling.rs):
# a venv at target/difftest-venv with tests/backends/requirements.txt installed.
# Made when missing or older than requirements.txt; otherwise a quiet no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/difftest-venv
requirements=tests/backends/requirements.txt
stamp=$venv/.installed
if [[ -x $venv/bin/python && -f $stamp && ! $requirements -nt $stamp ]]; then
  exit 0
fi
echo "difftest-env: installing $requirements into $venv"
rm -rf "$venv"
mkdir -p target
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
touch "$stamp"
