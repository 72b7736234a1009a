"""A pymilter milter that does nothing but what the bench's checks look for: the floor of a Python
milter's cost per inbound message (libmilter's threads and socket reads, pymilter's callbacks into
Python) under mattermail's negotiation, without any of mattermail's work.

The same callbacks as mattermail's milter, the same no-reply ones (connect, HELO, MAIL FROM, each
header, body), RCPT answered; at end of message one Authentication-Results field with what the
bench's checks expect (``spf=pass``, ``dkim=pass`` when a DKIM-Signature was seen, ``dmarc=pass``,
all for the MAIL FROM's last two labels): nothing is verified. One process.

    python -P bench/null_milter.py unix:/path/to.sock   (bench/inbound --milter-floor starts it)
"""
import sys

import Milter


class Null(Milter.Base):
    def __init__(self) -> None:
        self.domain = ""
        self.signed = False

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, name):
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mail_from, *params):
        self.domain = ".".join(mail_from.strip("<>").rpartition("@")[2].split(".")[-2:])
        self.signed = False
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        if name.lower() == "dkim-signature":
            self.signed = True
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        d = self.domain
        dkim = f"dkim=pass header.d={d}" if self.signed else "dkim=none"
        self.addheader("Authentication-Results",
                       f" mx.lawfirm.test; spf=pass smtp.mailfrom={d}; {dkim}; dmarc=pass header.from={d}", 0)
        return Milter.ACCEPT


if __name__ == "__main__":
    Milter.factory = Null
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("null", sys.argv[1], timeout=60)
