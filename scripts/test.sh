#!/usr/bin/env bash
# Install what the tests need, then run lint, type checks, the import contracts
# (pyproject.toml, [tool.importlinter]) and the whole test suite (unit,
# property and real-kernel tests in network namespaces). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check callgate tests bench
.venv/bin/mypy callgate
.venv/bin/lint-imports
set +e
.venv/bin/pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exit $rc
