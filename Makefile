# mattermail — the quick start is `make run` then `make test` (as root, on Debian).
VENV := .venv
DEVSTACK := $(VENV)/bin/mattermail-devstack
# Never let the repo root shadow pymilter's C extension "milter" (see DESIGN.md).
export PYTHONSAFEPATH := 1

.PHONY: deps run stop status test bench clean deb

deps:
	@bash packaging/dev-deps.sh

# STORE=postgresql: the store in a PostgreSQL cluster kept in var/postgresql (STORE=sqlite: back to the file).
run: deps
	@$(DEVSTACK) start --var var $(if $(STORE),--store $(STORE))

stop:
	@if [ -x $(DEVSTACK) ]; then $(DEVSTACK) stop --var var; fi

status: deps
	@$(DEVSTACK) status --var var

test: deps
	$(VENV)/bin/pytest

# Outbound filter speed over unix sockets, both keys signing: the SMTP path (accepted mail held) and end to
# end (capture copies filed vs OpenDKIM + always_bcc into Dovecot LMTP), interleaved; see bench/README.md.
bench: deps
	$(VENV)/bin/python -P bench/dkim_sign.py
	$(VENV)/bin/python -P bench/outbound --socket unix

# Debian package build/deb/mattermail_<version>_amd64.deb (private venv; see README).
deb:
	@bash packaging/debian/build-deb.sh

# var may be a symlink to the state under /var/lib/mattermail-dev/ (a checkout Postfix cannot enter).
clean: stop
	if [ -L var ]; then rm -rf "$$(readlink -f var)"; fi
	rm -rf var build *.egg-info
