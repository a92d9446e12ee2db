# Sourced by the scripts: make .venv with keyplane and its dev tools, quietly and only once per change.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "keyplane: creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
stamp=.venv/.keyplane-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "keyplane: installing dependencies into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  touch "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
