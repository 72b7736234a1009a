#!/usr/bin/env bash
# Install what the dev stack and the tests need, skipping what is already there:
# Debian packages (Postfix, Dovecot, libmilter, swaks, OpenDKIM, ...), a venv in
# .venv and mattermail itself (editable) with its test dependencies.
# Run as root on Debian/Ubuntu. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postfix postfix-sqlite postfix-pcre libmilter-dev dovecot-core swaks
              opendkim opendkim-tools opendmarc miltertest make gcc python3-dev python3-venv
              postgresql  # the tests' private PostgreSQL cluster (initdb, pg_ctl)
              systemd openssl  # the package test: systemd-analyze verify, a test certificate
              # swaks's STARTTLS and AUTH (Recommends, which --no-install-recommends drops;
              # listed here so a machine that already has swaks gets them too)
              libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl
              chromium chromium-driver  # the web view's browser tests (selenium drives /usr/bin/chromedriver)
              )

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "dev-deps: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "dev-deps: installing ${missing[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
    echo "dev-deps: creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.mattermail-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ postfix/dev/pyproject.toml -nt "$stamp" ]; then
    echo "dev-deps: pip install -e .[test] -e postfix/dev (the dev tools, not part of the product)"
    .venv/bin/pip install -q --disable-pip-version-check -U pip setuptools wheel
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' -e postfix/dev
    touch "$stamp"
fi
