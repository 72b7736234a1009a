#!/usr/bin/env bash
# `make deb`: build build/deb/mattermail_<version>_amd64.deb from the working tree
# (committed and uncommitted files alike, git-ignored ones left out; only
# what the package needs, see PATHS).
#
# The tree is copied to build/deb/src/mattermail-<version>/ with packaging/debian
# as debian/, and built there with dpkg-buildpackage (binary only). A build of
# the same tree is reused: build/deb/.key hashes those files as committed, the
# diff and untracked files; FORCE=1 rebuilds anyway. Log: build/deb/build.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/build/deb
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

VERSION=$(sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' mattermail/version.py)
[ -n "$VERSION" ] || { echo "deb: no __version__ in mattermail/version.py" >&2; exit 1; }
DEB=$OUT/mattermail_${VERSION}_amd64.deb

# What goes into the package (tests, docs, bench and the dev stack's files do not).
PATHS=(mattermail milter router ctl web packaging setup.cfg setup.py pyproject.toml README.md)
key=$( {
    for p in "${PATHS[@]}"; do git rev-parse -q --verify "HEAD:$p" || echo "$p: new"; done
    git diff HEAD --binary -- "${PATHS[@]}"
    git ls-files -o --exclude-standard -z -- "${PATHS[@]}" | xargs -0 -r sha256sum
} | sha256sum | cut -d' ' -f1)
if [ -z "${FORCE:-}" ] && [ -f "$DEB" ] && [ "$(cat "$OUT/.key" 2>/dev/null)" = "$key" ]; then
    echo "deb: $DEB is up to date"
    exit 0
fi

need=(debhelper dpkg-dev fakeroot python3.11 python3.11-venv python3-venv python3.11-dev libmilter-dev gcc
      ca-certificates)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || { echo "deb: missing build dependencies: ${missing[*]} (run as root)" >&2; exit 1; }
    echo "deb: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi

SRC=$OUT/src/mattermail-$VERSION
rm -rf "$OUT/src"
mkdir -p "$SRC"
git ls-files -co --exclude-standard -z -- "${PATHS[@]}" \
    | /usr/bin/python3 -c 'import os, sys
sys.stdout.buffer.write(b"".join(p + b"\0" for p in sys.stdin.buffer.read().split(b"\0")
                                 if p and os.path.lexists(p) and not p.startswith(b"build/")))' \
    | tar --null -T - -cf - | tar -xf - -C "$SRC"
cp -a packaging/debian "$SRC/debian"
rm -f "$SRC/debian/build-deb.sh"

top=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
if [ "$top" != "$VERSION" ]; then  # version.py moved on: a changelog entry for this build
    { echo "mattermail ($VERSION) unstable; urgency=medium"
      echo
      echo "  * Build of $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!build' || echo ' + local changes')."
      echo
      echo " -- mattermail maintainers <root@localhost>  $(date -R)"
      echo
      cat "$SRC/debian/changelog"; } >"$SRC/debian/changelog.new"
    mv "$SRC/debian/changelog.new" "$SRC/debian/changelog"
fi

echo "deb: building mattermail $VERSION (log: build/deb/build.log)"
start=$(date +%s)
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}
if ! (cd "$SRC" && env -u PYTHONSAFEPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        dpkg-buildpackage -b -us -uc --no-sign) >"$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log" >&2
    echo "deb: dpkg-buildpackage failed; full log in build/deb/build.log" >&2
    exit 1
fi
rm -f "$OUT"/mattermail_*_amd64.deb
mv "$OUT/src/mattermail_${VERSION}_amd64.deb" "$DEB"
rm -rf "$OUT/src"
echo "$key" >"$OUT/.key"
echo "deb: $DEB ($(du -h "$DEB" | cut -f1), $(( $(date +%s) - start ))s)"
