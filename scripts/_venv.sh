# Shared by scripts/test and scripts/demo: create .venv and install the project with the given extras.
# Idempotent: a stamp holds the hash of pyproject.toml, so a second run installs nothing that is current.
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "[veil setup] creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  local stamp=".venv/.veil-installed-${extras}"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[veil setup] .venv is current (extras: ${extras})"
    return 0
  fi
  echo "[veil setup] installing veil[${extras}] into .venv (first run takes a minute)"
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar on -q -e ".[${extras}]"
  echo "$want" > "$stamp"
}
