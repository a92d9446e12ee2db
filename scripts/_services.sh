# Sourced by scripts/test: make sure the servers the tests start themselves (PostgreSQL, Redis)
# and the browser the console tests drive (Debian's chromium, through Playwright) are installed,
# from the OS packages. The tests run them on loopback with throwaway data dirs.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "keyplane: installing ${missing[*]} from the OS packages (the tests start them)" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "keyplane: please install ${missing[*]} with your package manager" >&2
    exit 1
  fi
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
fi
