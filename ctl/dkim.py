"""mattermailctl dkim: DKIM signing keys, the DNS records to publish, and key rotation.

Keys live in the key table the milter signs with (``[dkim] keys_dir``), one
folder per domain (see :mod:`mattermail.dkimkeys`)::

    <keys_dir>/<domain>/<selector>.<rsa|ed25519>.pem            active: signed with
    <keys_dir>/<domain>/<selector>.<rsa|ed25519>.pem.pending    rotation in progress: not signed with
    <keys_dir>/<domain>/<selector>.<rsa|ed25519>.pem.retired    replaced: kept, not signed with

``load_keytable`` reads only ``*.pem``, so pending and retired keys are never
signed with.  Key files are mode 0600.  When the command runs as root and a
``mattermail`` system user exists (the user the milter runs as), the key file
and the folders created for it are given to that user; otherwise they stay
owned by whoever ran the command (root, typically): then make them readable
to the milter yourself.
"""

from __future__ import annotations

import datetime
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

import click
from mattermail.atomicfile import sync_dir
from mattermail.ctl import base
from mattermail.ctl.base import Context, UserFacingError, cli, json_option, pass_ctx
from mattermail.ctl.terminal import echo, echo_json, safe

from mattermail import dkimkeys
from mattermail.dns import Resolver, TempError

_ALG_SUFFIX = {"rsa": "r", "ed25519": "e"}
_STATES = {None: "active", "pending": "pending", "retired": "retired"}
_FILE_RE = re.compile(r"^(?P<selector>[^.].*)\.(?P<alg>rsa|ed25519)\.pem(?:\.(?P<state>pending|retired))?$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_SELECTOR_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
MAX_RSA_BITS = 4096


def valid_domain(value: str, field: str = "domain") -> str:
    """A lower-case domain name without trailing dot; UserFacingError naming ``field`` otherwise."""
    return base.valid_domain(value, field)


def _valid_selector(value: str) -> str:
    s = value.strip().lower()
    if len(s) > 200 or not _SELECTOR_RE.match(s):
        raise UserFacingError(f"--selector: {value!r} is not a valid DKIM selector (letters, digits, - and _)")
    return s


@dataclass(frozen=True)
class KeyFile:
    """One key file of the key table, whatever its state."""

    domain: str
    selector: str
    alg: str  # "rsa" or "ed25519"
    state: str  # "active", "pending" or "retired"
    path: Path

    def active_path(self) -> Path:
        return self.path.with_name(f"{self.selector}.{self.alg}.pem")


def _scan(keys_dir: Path, domain: str | None = None) -> list[KeyFile]:
    """Every key file under ``keys_dir`` (of ``domain`` only, if given), by domain then selector."""
    root = Path(keys_dir)
    dirs = [root / domain] if domain else (sorted(root.iterdir()) if root.is_dir() else [])
    out: list[KeyFile] = []
    for d in dirs:
        if d.name.startswith(".") or not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            m = _FILE_RE.match(p.name)
            if m and p.is_file():
                out.append(KeyFile(d.name.rstrip(".").lower(), m["selector"], m["alg"], _STATES[m["state"]], p))
    return out


def _default_selector(alg: str, today: datetime.date) -> str:
    return f"mm{today:%Y%m}{_ALG_SUFFIX[alg]}"


def _free_selector(alg: str, taken: set[str], today: datetime.date) -> str:
    """``mm<YYYYMM><r|e>``, else ``mm<YYYYMMDD><r|e>``, else that with a counter."""
    suffix = _ALG_SUFFIX[alg]
    for cand in (_default_selector(alg, today), f"mm{today:%Y%m%d}{suffix}"):
        if cand not in taken:
            return cand
    n = 2
    while f"mm{today:%Y%m%d}{suffix}{n}" in taken:
        n += 1
    return f"mm{today:%Y%m%d}{suffix}{n}"


def _owner(path: Path) -> str:
    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _write_key(keys_dir: Path, domain: str, path: Path, key: dkimkeys.PrivateKey) -> str:
    """Write ``key`` at ``path`` (mode 0600); its owner's name.

    Run as root, mattermailctl has already become the daemons' user (ctl/base.py),
    so the key belongs to the milter that reads it.
    """
    dkimkeys.write_private_key(path, key, mode=0o600)
    return _owner(path)


def _record_lines(key: dkimkeys.PrivateKey, selector: str, domain: str) -> list[str]:
    owner, value = dkimkeys.dns_record(key, selector, domain)
    return [
        f"Publish this TXT record in the {domain} zone (zone-file line):",
        f"  {dkimkeys.zone_line(owner, value)}",
        f"or, in a registrar's web form, name {selector}._domainkey ({owner}) with the value:",
        f"  {value}",
    ]


def _key_info(kf: KeyFile) -> dict[str, object]:
    """What ``dkim list`` shows for one key file."""
    info: dict[str, object] = {
        "domain": kf.domain, "selector": kf.selector, "algorithm": kf.alg, "state": kf.state,
        "file": str(kf.path),
    }
    try:
        key = dkimkeys.load_private_key(kf.path)
    except (ValueError, OSError) as e:
        info.update(bits=None, dns_name=None, txt=None, zone_line=None, error=str(e))
        return info
    owner, value = dkimkeys.dns_record(key, kf.selector, kf.domain)
    info.update(bits=key.key_size if kf.alg == "rsa" else 256,  # type: ignore[union-attr]
                dns_name=owner, txt=value, zone_line=dkimkeys.zone_line(owner, value))
    return info


def _generate(alg: str, bits: int | None) -> dkimkeys.PrivateKey:
    if alg == "ed25519":
        if bits is not None:
            raise UserFacingError("--bits: only applies to rsa keys (ed25519 keys have a fixed size)")
        return dkimkeys.generate("ed25519")
    bits = 2048 if bits is None else bits
    if not dkimkeys.MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise UserFacingError(f"--bits: {bits} is out of range ({dkimkeys.MIN_RSA_BITS}-{MAX_RSA_BITS}; 2048 is advised)")
    return dkimkeys.generate("rsa", bits)


def _sending_domain_note(ctx: Context, domain: str) -> None:
    domains = {d.rstrip(".").lower() for d in ctx.config.general.sending_domains}
    if domains and domain not in domains:
        echo(f"note: {domain} is not in general.sending_domains", err=True)


_ALGORITHM = click.Choice(["rsa", "ed25519"], case_sensitive=False)


@cli.group()
def dkim() -> None:
    """DKIM signing keys: create, list and rotate them, and the DNS records to publish.

    \b
    Keys live under [dkim] keys_dir as <domain>/<selector>.<rsa|ed25519>.pem;
    the milter signs with every *.pem there (pending and retired keys are
    kept as *.pem.pending / *.pem.retired and never signed with).

    \b
    Example:
      mattermailctl dkim genkey lawfirm.test --algorithm ed25519
    """


@dkim.command("genkey")
@click.argument("domain")
@click.option("--selector", help="DNS selector (default mm<YYYYMM>r for rsa, mm<YYYYMM>e for ed25519).")
@click.option("--algorithm", "alg", type=_ALGORITHM, default="rsa", show_default=True, help="Key type.")
@click.option("--bits", type=int, help="RSA key size (default 2048).")
@pass_ctx
def dkim_genkey(ctx: Context, domain: str, selector: str | None, alg: str, bits: int | None) -> None:
    """Create a signing key for DOMAIN and print the DNS TXT record to publish.

    The key is active at once (the milter signs with it); publish the record
    before mail signed with it goes out, or receivers see dkim=fail. An
    existing selector is never overwritten. The key file is mode 0600; when
    run as root and a `mattermail` system user exists, it is owned by that
    user (the milter runs as it), otherwise by whoever ran the command. To
    replace a key, use `dkim rotate`.

    \b
    Example:
      mattermailctl dkim genkey lawfirm.test
      mattermailctl dkim genkey lawfirm.test --algorithm ed25519 --selector mm2026e
    """
    alg = alg.lower()
    domain = valid_domain(domain)
    sel = _valid_selector(selector) if selector else _default_selector(alg, datetime.date.today())
    keys_dir = ctx.config.dkim.keys_dir
    existing = _scan(keys_dir, domain)
    clash = [k for k in existing if k.selector == sel]
    if clash:
        raise UserFacingError(f"--selector: {sel} is already used for {domain} ({clash[0].path.name}); "
                              "choose another --selector, or replace the key with `dkim rotate`")
    key = _generate(alg, bits)
    _sending_domain_note(ctx, domain)
    path = Path(keys_dir) / domain / f"{sel}.{alg}.pem"
    owner = _write_key(keys_dir, domain, path, key)
    size = f"{key.key_size}-bit " if alg == "rsa" else ""  # type: ignore[union-attr]
    echo(f"wrote {size}{alg} key for {domain}, selector {sel}: {path} (mode 0600, owner {owner})")
    same = [k for k in existing if k.alg == alg and k.state == "active"]
    if same:
        echo(f"note: {domain} also signs with {alg} key {', '.join(k.selector for k in same)}; "
             "to replace a key use `dkim rotate`", err=True)
    for line in _record_lines(key, sel, domain):
        echo(line)


@dkim.command("list")
@json_option
@pass_ctx
def dkim_list(ctx: Context, as_json: bool) -> None:
    """List every key: domain, selector, algorithm, bits, state, file and its TXT record.

    \b
    Example:
      mattermailctl dkim list --json
    """
    keys = [_key_info(k) for k in _scan(ctx.config.dkim.keys_dir)]
    if as_json:
        echo_json(keys)
        return
    if not keys:
        echo(f"no DKIM keys in {ctx.config.dkim.keys_dir}")
    for k in keys:
        bits = k["bits"] if k["bits"] is not None else "?"
        echo("\t".join(safe(v) for v in (k["domain"], k["selector"], k["algorithm"], bits, k["state"], k["file"])))
        echo(f"  {safe(k['zone_line'])}" if k["zone_line"] else f"  error: {safe(k['error'])}")


@dkim.command("rotate")
@click.argument("domain")
@click.option("--algorithm", "alg", type=_ALGORITHM,
              help="Which key to rotate (needed when DOMAIN has both an rsa and an ed25519 key).")
@click.option("--selector", help="Selector of the new key (default mm<YYYYMM><r|e>, or one not yet used).")
@click.option("--bits", type=int, help="RSA key size of the new key (default 2048).")
@click.option("--finish", is_flag=True, help="Step 2: check DNS, then activate the new key and retire the old one.")
@pass_ctx
def dkim_rotate(ctx: Context, domain: str, alg: str | None, selector: str | None, bits: int | None,
                finish: bool) -> None:
    """Replace DOMAIN's key with a new one, in two steps, without a gap in signing.

    \b
    1. `dkim rotate DOMAIN` makes a key with a new selector and keeps it
       pending (<selector>.<alg>.pem.pending, not signed with yet), and
       prints its TXT record. The old key keeps signing. Publish the record.
    2. `dkim rotate DOMAIN --finish` looks the new record up in DNS ([dns]
       config). Only if DNS serves the new public key does it activate the
       new key and retire the old one (renamed <selector>.<alg>.pem.retired,
       kept). If not, it exits 1 and changes nothing: wait for DNS, run again.
    Keep the old TXT record published for a few days after step 2, so mail
    already sent still verifies; then delete it.

    \b
    Example:
      mattermailctl dkim rotate lawfirm.test --algorithm rsa
      mattermailctl dkim rotate lawfirm.test --finish
    """
    domain = valid_domain(domain)
    alg = alg.lower() if alg else None
    if finish:
        if bits is not None:
            raise UserFacingError("--bits: not used with --finish (the pending key already exists)")
        _rotate_finish(ctx, domain, alg, _valid_selector(selector) if selector else None)
        return
    keys_dir = ctx.config.dkim.keys_dir
    existing = _scan(keys_dir, domain)
    active = [k for k in existing if k.state == "active"]
    if alg is None:
        algs = sorted({k.alg for k in active})
        if not algs:
            raise UserFacingError(f"domain: {domain} has no DKIM key to rotate; create one with `dkim genkey`")
        if len(algs) > 1:
            raise UserFacingError(f"--algorithm: {domain} has {' and '.join(algs)} keys; say which to rotate")
        alg = algs[0]
    old = [k for k in active if k.alg == alg]
    if not old:
        raise UserFacingError(f"domain: {domain} has no {alg} key to rotate; create one with `dkim genkey`")
    pending = [k for k in existing if k.state == "pending" and k.alg == alg]
    if pending:
        raise UserFacingError(f"domain: a rotation of {domain}'s {alg} key is already pending (selector "
                              f"{pending[0].selector}): publish its record and run `dkim rotate {domain} --finish`, "
                              f"or delete {pending[0].path} to start over")
    taken = {k.selector for k in existing}
    if selector:
        sel = _valid_selector(selector)
        if sel in taken:
            raise UserFacingError(f"--selector: {sel} is already used for {domain}; choose another --selector")
    else:
        sel = _free_selector(alg, taken, datetime.date.today())
    key = _generate(alg, bits)
    path = Path(keys_dir) / domain / f"{sel}.{alg}.pem.pending"
    owner = _write_key(keys_dir, domain, path, key)
    echo(f"new {alg} key for {domain}, selector {sel}, pending: {path} (mode 0600, owner {owner})")
    echo(f"{', '.join(k.selector for k in old)} keeps signing until the rotation is finished.")
    for line in _record_lines(key, sel, domain):
        echo(line)
    echo(f"Once the record is published, run: mattermailctl dkim rotate {domain} --finish")


def _rotate_finish(ctx: Context, domain: str, alg: str | None, selector: str | None) -> None:
    """Step 2 of a rotation: activate every pending key DNS publishes; all or nothing."""
    existing = _scan(ctx.config.dkim.keys_dir, domain)
    pending = [k for k in existing if k.state == "pending"
               and (alg is None or k.alg == alg) and (selector is None or k.selector == selector)]
    if not pending:
        raise UserFacingError(f"domain: no pending key rotation for {domain}; start one with `dkim rotate {domain}`")
    resolver = Resolver(ctx.config.dns)
    problems: list[str] = []
    for kf in pending:
        try:
            key = dkimkeys.load_private_key(kf.path)
        except ValueError as e:
            raise UserFacingError(f"key file: {e}") from None
        owner, _ = dkimkeys.dns_record(key, kf.selector, domain)
        try:
            records = resolver.txt(owner)
        except TempError as e:
            raise UserFacingError(f"{owner}: DNS lookup failed temporarily ({e}); nothing changed, "
                                  "try again later") from None
        if not any(dkimkeys.public_key_matches(key, r) for r in records):
            seen = "no TXT record" if not records else "a TXT record with another key"
            problems.append(f"{owner}: DNS has {seen}, not the new {kf.alg} key")
    if problems:
        raise UserFacingError("; ".join(problems) + "; nothing changed: publish the record shown by "
                              f"`dkim list` (state pending), wait for DNS, then run `dkim rotate {domain} --finish` again")
    for kf in pending:
        os.rename(kf.path, kf.active_path())  # the new key signs first, so there is never a gap
        retired = [k for k in existing if k.state == "active" and k.alg == kf.alg]
        for old in retired:
            os.rename(old.path, old.path.with_name(old.path.name + ".retired"))
        sync_dir(kf.path.parent)
        echo(f"{domain}: {kf.alg} key {kf.selector} is now active")
        for old in retired:
            echo(f"{domain}: retired {old.selector} (kept as {old.path.name}.retired); keep the TXT record "
                 f"{old.selector}._domainkey.{domain} published for a few days, then delete it")
