"""mattermailctl dns: is a sending domain's DNS (MX, SPF, DKIM, DMARC) fit to send?

The module is not called ``dns`` so that it never hides dnspython's ``dns``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict

import click
from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx
from mattermail.ctl.terminal import echo, echo_json, safe
from mattermail.ctl.dkim import valid_domain

from mattermail import dkimkeys
from mattermail.dns import Resolver, TempError
from mattermail.dnscheck import blocking, check_domain


def _valid_ip(value: str) -> str:
    try:
        return ipaddress.ip_address(value.strip()).compressed
    except ValueError:
        raise UserFacingError(f"--ip: {value!r} is not an IP address") from None


def _hostname_ips(resolver: Resolver, hostname: str) -> list[str]:
    """The public A/AAAA addresses of ``hostname``; UsageError asking for --ip when there are none."""
    why = f"general.hostname {hostname!r} has no public A/AAAA record in DNS"
    ips: list[str] = []
    try:
        for rdtype in ("A", "AAAA"):
            ips += [r.address for r in resolver.query(hostname, rdtype)]
    except TempError as e:
        why = f"looking up general.hostname {hostname!r} failed ({e})"
    ips = [ip for ip in dict.fromkeys(ips)
           if not (ipaddress.ip_address(ip).is_loopback or ipaddress.ip_address(ip).is_unspecified)]
    if not ips:
        raise click.UsageError(f"--ip is needed: {why}, so the address this server sends from is "
                               "unknown; give it with --ip ADDRESS (repeatable)")
    return ips


@cli.group("dns")
def dns_group() -> None:
    """Check a sending domain's DNS records.

    \b
    Example:
      mattermailctl dns check lawfirm.test --ip 192.0.2.10
    """


@dns_group.command("check")
@click.argument("domain")
@click.option("--ip", "ips", multiple=True, metavar="IP",
              help="An address this server sends from (repeatable; default: the A/AAAA of general.hostname).")
@json_option
@pass_ctx
def dns_check(ctx: Context, domain: str, ips: tuple[str, ...], as_json: bool) -> None:
    """Check DOMAIN's MX, SPF, DKIM and DMARC records for sending from this server.

    SPF must authorise our addresses (--ip, or those of general.hostname),
    in one record within the 10-lookup limit; every DKIM key of DOMAIN in
    the key table must be published as is; DMARC must be present and valid.
    Each problem comes with the exact TXT value to publish. Exit status 1
    when any problem would make Gmail or Yahoo reject the domain's mail,
    0 otherwise (warnings included). Lookups use the [dns] config.

    \b
    Example:
      mattermailctl dns check lawfirm.test
      mattermailctl dns check lawfirm.test --ip 192.0.2.10 --ip 2001:db8::25 --json
    """
    cfg = ctx.config
    domain = valid_domain(domain)
    resolver = Resolver(cfg.dns)
    our_ips = [_valid_ip(ip) for ip in ips] if ips else _hostname_ips(resolver, cfg.general.hostname)
    try:
        keys = dkimkeys.load_keytable(cfg.dkim.keys_dir).get(domain, [])
    except ValueError as e:
        raise UserFacingError(f"dkim.keys_dir: {e}") from None
    findings = check_domain(domain, resolver, our_ips, keys)
    is_blocking = blocking(findings)
    problems = sum(f.level == "error" for f in findings)
    if as_json:
        echo_json({"domain": domain, "ips": our_ips, "findings": [asdict(f) for f in findings],
                   "blocking": is_blocking})
    else:
        echo(f"{domain}, sending from {', '.join(our_ips)}:")
        for f in findings:
            echo(f"[{f.level}] {f.check}: {safe(f.message)}")
            if f.fix:
                echo(f"  fix: {safe(f.fix)}")
        if is_blocking:
            echo(f"{domain}: would be rejected by Gmail/Yahoo: {problems} problem(s)")
        else:
            warnings = sum(f.level == "warn" for f in findings)
            echo(f"{domain}: no blocking problems ({warnings} warning(s))")
    if is_blocking:
        click.get_current_context().exit(1)
