"""The layers hold: only mattermail/store/ touches the database; milter and router never import each other.

Reads the product's source with ast (no imports), so a violation in any module is found, whether a
test exercises it or not. Tests and benches may look into the database directly; the product may not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = {"mattermail": "mattermail", "milter": "mattermail.milter", "router": "mattermail.router",
           "ctl": "mattermail.ctl", "web": "mattermail.web"}
STORE = REPO / "mattermail" / "store"
DRIVERS = {"sqlite3", "sqlite_utils", "psycopg", "psycopg_pool"}
DEV_ONLY = {"mattermail_dev", "dnslib"}  # the dev stack's tools (postfix/dev/), never shipped
SQL_CALLS = {"execute", "executemany", "executescript"}


def _modules() -> list[tuple[Path, str]]:
    out = []
    for folder, package in PRODUCT.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.is_relative_to(STORE):
                continue
            rel = path.relative_to(REPO / folder).with_suffix("")
            out.append((path, ".".join([package, *rel.parts]).removesuffix(".__init__")))
    return out


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import, relative ones resolved against ``module``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _violations(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(REPO)
    bad = []
    for line, name in _imports(tree, module):
        top = name.split(".")[0]
        if top in DRIVERS:
            bad.append(f"{rel}:{line}: imports {name} (database access belongs in mattermail/store/)")
        if top in DEV_ONLY:
            bad.append(f"{rel}:{line}: imports {name} (a dev tool; the product must not need it)")
        if module.startswith("mattermail.milter") and (name == "mattermail.router" or name.startswith("mattermail.router.")):
            bad.append(f"{rel}:{line}: the milter imports {name}")
        if module.startswith("mattermail.router") and (name == "mattermail.milter" or name.startswith("mattermail.milter.")):
            bad.append(f"{rel}:{line}: the router imports {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            bad.append(f"{rel}:{node.lineno}: calls .{node.func.attr}() (SQL belongs in mattermail/store/)")
        if isinstance(node, ast.Attribute) and node.attr in ("db", "conn") and isinstance(node.value, ast.Name) \
                and node.value.id in ("store", "self") and "store" in ast.unparse(node).lower():
            bad.append(f"{rel}:{node.lineno}: reaches into {ast.unparse(node)} (a connection)")
    return bad


def test_the_source_tree_is_found():
    mods = dict((m, p) for p, m in _modules())
    assert "mattermail.milter.app" in mods and "mattermail.router.lmtp" in mods and "mattermail.ctl.messages" in mods, \
        f"only {len(mods)} modules found under {REPO}"


@pytest.mark.parametrize("path,module", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_sql_or_cross_import_outside_the_store(path, module):
    assert _violations(path, module) == []


def test_the_checker_finds_what_it_forbids(tmp_path):
    """The rules above can fail: each forbidden shape in a scratch module is reported."""
    f = tmp_path / "x.py"
    f.write_text("import sqlite3\nimport dnslib\nfrom mattermail.router import lmtp\nfrom ..router.store import Store\n"
                 "def f(store):\n    store.db.execute('SELECT 1')\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        bad = _violations(f, "mattermail.milter.x")
    finally:
        REPO = saved
    text = "\n".join(bad)
    assert "imports dnslib (a dev tool" in text
    assert "imports sqlite3" in text and "milter imports mattermail.router.lmtp" in text
    assert "milter imports mattermail.router.store" in text and "calls .execute()" in text and "store.db" in text, text


@pytest.mark.parametrize("entry,forbidden", [("mattermail.milter.__main__", "mattermail.router"),
                                             ("mattermail.router.__main__", "mattermail.milter")])
def test_a_daemon_loads_nothing_of_the_other(entry, forbidden):
    """At run time too (imports made inside functions at start-up are loaded by then)."""
    import subprocess
    import sys

    code = (f"import sys, {entry} as m\n"
            f"print(sorted(n for n in sys.modules if n == {forbidden!r} or n.startswith({forbidden!r} + '.')))")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", f"{entry} loaded {r.stdout.strip()}"


def test_the_product_package_ships_no_dev_tools():
    """pip install . (and the Debian package) installs the product only: no dev stack, no dnslib."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "dnslib" not in requires and "devstack" not in scripts and "sink" not in scripts, (requires, scripts)
    assert not [p.name for p in (REPO / "mattermail").glob("*.py") if p.stem in ("devstack", "devdns", "sink")]
