#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (called by `nox -s tests` before pytest).
#
# Each entry is "command-that-must-exist:debian-package"; the command is a name looked up on
# PATH or a path, which may be a glob (Debian keeps PostgreSQL's server programs in
# /usr/lib/postgresql/<version>/bin, off the PATH). Nothing is installed when every
# command is already there, so a developer's machine is left alone; on a fresh CI machine
# (root, Debian) the missing packages come from apt. Anything else is a clear error: the
# suite never skips a test because a part is missing.
set -euo pipefail

NEEDED=(
    "/usr/lib/postgresql/*/bin/initdb:postgresql"
)

found() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local path
    for path in $1; do  # unquoted on purpose: expands a glob
        [ -x "$path" ] && return 0
    done
    return 1
}

missing=()
for entry in "${NEEDED[@]}"; do
    cmd="${entry%%:*}"
    pkg="${entry#*:}"
    if ! found "$cmd"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: the test suite needs these Debian packages: ${missing[*]}" >&2
    echo "system-deps: install them (as root: apt-get install -y ${missing[*]}) and run again" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}"
