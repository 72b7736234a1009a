"""mattermail's dev tools: the private stack (``mattermail-devstack``), its DNS server
(``mattermail-devdns``) and "the internet" sink (``mattermail-sink``).

Not part of the product: ``make deps`` installs them into the dev venv (``pip install -e
postfix/dev``); the Debian package and ``pip install .`` do not ship them (nor dnslib).
"""
