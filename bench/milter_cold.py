"""The milter's callbacks in-process, with the CPU caches evicted between callbacks (seconds).

MatterMilter's callbacks are called as libmilter calls them (envfrom_bytes, envrcpt_bytes,
header_bytes per field, body, eom; 10 messages per connection) on a real Runtime (a store,
two-way capture on, the DNS cache on, mattermail-devdns behind it). Inbound (the default):
bench/inbound_cpu.py's ~4 KB messages, signed and unsigned. ``--direction outbound``: as
bench/outbound's SMTP path, alice@lawfirm.test authenticated (SASL) sending bench/outbound's
4 KB and 100 KB messages to someone@example.test, capture on, a default disclaimer, both keys
of lawfirm.test (RSA-2048 and Ed25519) signing. Before each callback ``--thrash`` MB of memory are hashed, as the other
processes of a busy MX (smtpd, cleanup, the other sessions) do between two milter commands;
only the callbacks' CPU is counted. ``--thrash 0`` gives the hot cost.

Why: bench/inbound's milter CPU per message (1.0-1.3 ms unsigned, also with one SMTP session,
so no lock or GIL contention) is 4-5x the callbacks' hot cost and close to their cost here
with 4 MB evicted; a pymilter milter that only gathers the same callbacks costs 0.2-0.4 ms there.

    .venv/bin/python -P bench/milter_cold.py [--direction inbound|outbound] [--thrash 4] [--messages 300]
                                             [--rounds 5] [--profile N] [--kind ...]

Prints the CPU ms per message by callback and the median per message, per kind (inbound: signed
and unsigned; outbound: 4KB and 100KB), with the rounds' values.
"""
import argparse, cProfile, logging, os, pstats, socket, statistics, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound_cpu as ic
import Milter
from mattermail import config, logs
from mattermail.milter.app import MatterMilter
from mattermail.milter.runtime import Runtime
from mattermail import store as storemod

class Ctx:
    def __init__(self, sym): self.sym = {"i": "4QABC123", **sym}; self.out = []
    def getsymval(self, n): return self.sym.get(n)
    def setpriv(self, o): pass
    def addheader(self, f, v, idx=-1): self.out.append(("add", f, v))
    def chgheader(self, f, i, v): self.out.append(("chg", f, i))
    def addrcpt(self, r, p): self.out.append(("rcpt", r))
    def setreply(self, *a): self.out.append(("reply",) + a)
    def quarantine(self, r): pass
    def replacebody(self, b): self.out.append(("body", len(b)))

ap = argparse.ArgumentParser()
ap.add_argument("--messages", type=int, default=300); ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--profile", type=int, default=0)
ap.add_argument("--direction", default="inbound", choices=["inbound", "outbound"])
ap.add_argument("--kind", default="both", choices=["both", "signed", "unsigned", "4KB", "100KB"])
ap.add_argument("--thrash", type=int, default=4, help="MB of cache evicted before each callback (0: hot)")
args = ap.parse_args()
stub = ic.StubResolver(ic.DNS(nameservers=("127.0.0.1",), port=53, timeout=1.0, cache_size=0))
keys = ic.publish(stub, 20, False)
folder = tempfile.mkdtemp(prefix="mm-h-")
server, counting = ic.serve(stub, folder)
port = counting.cfg.port
cfg = config.from_dict({"milter": {"socket": "unix:/tmp/x.sock", "trusted_networks": ["127.0.0.1/32"]},
                        "store": {"path": f"{folder}/s.sqlite", "messages_dir": f"{folder}/m"},
                        "dkim": {"keys_dir": f"{folder}/keys"},
                        "dns": {"nameservers": ["127.0.0.1"], "port": port, "timeout": 2.0},
                        "capture": {"address": "capture@capture.lawfirm.test", "secret_file": f"{folder}/secret"},
                        "general": {"sending_domains": ["lawfirm.test"]}})
open(f"{folder}/secret", "w").write("x" * 64); os.chmod(f"{folder}/secret", 0o600)
logs.setup("mattermail-milter", "info")
logging.getLogger().handlers[0].stream = open(f"{folder}/milter.log", "w")
rt = Runtime(cfg)
storemod.add_user(rt.store(), "alice@lawfirm.test", "{ARGON2ID}x")
MatterMilter.runtime = rt
SENDER, RCPT = "alice@lawfirm.test", "someone@example.test"
if args.direction == "inbound":
    domains = list(keys)
    kinds = {"signed": [ic.make(i, domains[i % len(domains)], keys[domains[i % len(domains)]]) for i in range(args.messages)],
             "unsigned": [ic.make(i, domains[i % len(domains)], None) for i in range(args.messages)]}
else:
    from types import SimpleNamespace
    from mattermail import dkimkeys
    for sel, alg in (("dev2026r", "rsa"), ("dev2026e", "ed25519")):
        os.makedirs(f"{folder}/keys/lawfirm.test", exist_ok=True)
        dkimkeys.write_private_key(f"{folder}/keys/lawfirm.test/{sel}.{alg}.pem", dkimkeys.generate(alg))
    rt.load_keys()
    with storemod.transaction(rt.store()):
        storemod.set_disclaimer(rt.store(), "default", "", "This email and any attachment are confidential. -- Lawfirm LLP (bench)", None)

    def outmsg(i: int, size: int) -> SimpleNamespace:
        """bench/outbound's message (smtp-source's shape), with the Received field Postfix adds."""
        headers = [("Received", f" from mail.x (mail.x [{ic.CLIENT}])\n\t(Authenticated sender: {SENDER})\n\tby mx.lawfirm.test (Postfix)"
                                 f" with ESMTPSA id 4QABC{i:03d}\n\tfor <{RCPT}>; Thu,  3 Dec 2026 17:00:00 +0000 (UTC)"),
                   ("From", f" <{SENDER}>"), ("To", f" <{RCPT}>"), ("Date", " Thu, 03 Dec 2026 17:00:00 +0000"),
                   ("Message-Id", f" <bench.{i}.{size}@lawfirm.test>")]
        lines, n, left = [], 1, size
        while left > 0:
            line = (str(n) + "X" * 79)[:min(80, left)]
            lines.append(line.encode() + b"\r\n")
            left -= len(line) + 2
            n += 1
        return SimpleNamespace(helo="mail.x", mail_from=SENDER, rcpt=RCPT, headers=headers, body=b"".join(lines))
    kinds = {"4KB": [outmsg(i, 4096) for i in range(args.messages)],
             "100KB": [outmsg(i, 102400) for i in range(args.messages)]}
import hashlib
BUF = bytearray(8 << 20)
T = [0.0]
def timed(f, *a):
    if args.thrash:
        hashlib.md5(BUF[: args.thrash << 20]).digest()
    t = time.process_time(); r = f(*a); d = time.process_time() - t; T[0] += d; PER[f.__name__] = PER.get(f.__name__, 0) + d; return r
PER = {}
def session(samples):
    outbound = args.direction == "outbound"
    ctx = Ctx({"{auth_authen}": SENDER} if outbound else {}); m = MatterMilter(); m._setctx(ctx); m._protocol = 0x1FFFFF & ~(Milter.P_NOHDRS | Milter.P_NOBODY)
    timed(m.connect, "mail.x", socket.AF_INET, (ic.CLIENT, 4000)); timed(m.hello, samples[0].helo)
    for s in samples:
        timed(m.envfrom_bytes, f"<{s.mail_from}>".encode())
        timed(m.envrcpt_bytes, f"<{s.rcpt}>".encode() if outbound else b"<someone@lawfirm.test>")
        for n, v in s.headers:
            timed(m.header_bytes, n, v.encode())
        body = s.body if outbound else s.raw[s.raw.index(b"\r\n\r\n") + 4:]
        for i in range(0, len(body), 65535):  # libmilter's largest body chunk
            timed(m.body, body[i:i + 65535])
        rc = timed(m.eom)
        assert rc == Milter.ACCEPT, (rc, ctx.out)
    timed(m.close)
    if outbound:  # each message: the capture recipient, the disclaimer (a new body), two signatures
        n = len(samples)
        assert sum(o[0] == "rcpt" for o in ctx.out) == n, ctx.out
        assert sum(o[:2] == ("add", "DKIM-Signature") for o in ctx.out) == 2 * n, ctx.out
        assert sum(o[0] == "body" for o in ctx.out) >= n, ctx.out
def run(samples):
    T[0] = 0.0
    for i in range(0, len(samples), 10):
        session(samples[i:i + 10])
    return T[0] * 1000 / len(samples)
try:
    for kind, samples in kinds.items():
        if args.kind != "both" and kind != args.kind: continue
        run(samples)
        r = [run(samples) for _ in range(args.rounds)]
        n = len(samples) * (args.rounds + 1); print({k: round(v * 1000 / n, 3) for k, v in PER.items()}); PER.clear()
        print(f"{kind:8s} CPU ms/msg median {statistics.median(r):.3f} (min {min(r):.3f} max {max(r):.3f})"
              f" rounds {' '.join(f'{x:.3f}' for x in r)}")
    if args.profile:
        prof = cProfile.Profile(); prof.enable()
        for kind in kinds:
            if args.kind != "both" and kind != args.kind: continue
            run(kinds[kind])
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(args.profile)
finally:
    server.kill()
