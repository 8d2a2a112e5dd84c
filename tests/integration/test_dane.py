"""DANE for SMTP (RFC 7672, issue 13 part 4): tls_policy dane and dane-only, dns_dnssec_trusted.

Real parts only, on 127.0.42.x (this module only): the zone dane.test is signed with
ldns-signzone (a fresh key per run) and served by NSD (.2); plain.test is not signed; a
validating unbound (.3, trust anchor: the dane.test key) resolves both for relayd
(dns_servers = 127.0.42.3:53, dns_dnssec_trusted = yes).  The TLSA records are computed from
the certificates the destinations (aiosmtpd with STARTTLS) present.

  .10 mx-ee.dane.test    leaf of the test CA      TLSA 3 1 1 (DANE-EE, SPKI, SHA-256)
  .11 mx-ta.dane.test    leaf + test CA           TLSA 2 0 1 (DANE-TA, the CA, SHA-256)
  .12 mx-512.dane.test   leaf                     TLSA 3 0 2 (DANE-EE, cert, SHA-512)
  .13 mx-full.dane.test  leaf                     TLSA 3 1 0 (DANE-EE, SPKI, full)
  .15 mx-tan.dane.test   test CA leaf naming other.test   TLSA 2 0 1 (the name must match)
  .14 the impostor: a certificate from ANOTHER CA; names pointing at it:
      mx-imp.dane.test     TLSA 3 1 1 of the genuine key (does not match)
      mx-notlsa.dane.test  no TLSA (secure denial)
      mx-unus.dane.test    only PKIX-EE(1) records (unusable for SMTP)
      mx-bogus.dane.test   a TLSA record changed after signing (bogus: SERVFAIL)
      mx.plain.test        in the unsigned zone, with a non-matching TLSA record
"""
import os
import smtplib
import tempfile
import unittest

from relaytest import RelayTestCase, wait_for
from dsttest import (AioSink, Nsd, SignedZone, TestCA, Unbound, server_tls_context, tlsa)

NET = "127.0.42."
NS, RESOLVER, RELAY, PORT = NET + "2", NET + "3", NET + "1", 2525
EE, TA, S512, FULL, IMP, TAN = (NET + str(i) for i in (10, 11, 12, 13, 14, 15))

# recipient domain -> (MX host, level)
DOMAINS = {
    "ee.dane.test": ("mx-ee.dane.test", "dane"),
    "ee-only.dane.test": ("mx-ee.dane.test", "dane-only"),
    "ta.dane.test": ("mx-ta.dane.test", "dane-only"),
    "d512.dane.test": ("mx-512.dane.test", "dane"),
    "full.dane.test": ("mx-full.dane.test", "dane"),
    "tan.dane.test": ("mx-tan.dane.test", "dane"),
    "imp.dane.test": ("mx-imp.dane.test", "dane"),
    "imp-may.dane.test": ("mx-imp.dane.test", "may"),
    "notlsa.dane.test": ("mx-notlsa.dane.test", "dane"),
    "notlsa-only.dane.test": ("mx-notlsa.dane.test", "dane-only"),
    "unus.dane.test": ("mx-unus.dane.test", "dane"),
    "unus-only.dane.test": ("mx-unus.dane.test", "dane-only"),
    "bogus.dane.test": ("mx-bogus.dane.test", "dane"),
    "ins.plain.test": ("mx.plain.test", "dane"),
    "insmx.plain.test": ("mx-ee.dane.test", "dane"),
    "insmx-only.plain.test": ("mx-ee.dane.test", "dane-only"),
}
BOGUS_OK = "3 1 1 " + "ab" * 32


def zone_text(origin, records):
    out = []
    for name, rr in records:
        if name.endswith("." + origin):
            out.append("%s. IN %s\n" % (name, rr))
    return "".join(out)


class DaneTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="relaytest-dane-")
        ca = TestCA(cls.dir, "DANE Test CA")
        other = TestCA(cls.dir, "Impostor CA")
        ee, ta, c512, full = (ca.issue(n) for n in ("mx-ee.dane.test", "mx-ta.dane.test",
                                                    "mx-512.dane.test", "mx-full.dane.test"))
        tan = ca.issue("other.test")
        genuine = ca.issue("mx-imp.dane.test")   # its key is published; never served
        imp = other.issue("mx-imp.dane.test")
        rec = [(d, "MX 10 %s." % mx) for d, (mx, _) in DOMAINS.items()]
        rec += [("mx-ee.dane.test", "A " + EE), ("mx-ta.dane.test", "A " + TA),
                ("mx-512.dane.test", "A " + S512), ("mx-full.dane.test", "A " + FULL),
                ("mx-tan.dane.test", "A " + TAN)]
        rec += [(n, "A " + IMP) for n in ("mx-imp.dane.test", "mx-notlsa.dane.test",
                                         "mx-unus.dane.test", "mx-bogus.dane.test",
                                         "mx.plain.test")]
        rec += [("_25._tcp.mx-ee.dane.test", "TLSA " + tlsa(ee[2], 3, 1, 1)),
                ("_25._tcp.mx-ta.dane.test", "TLSA " + tlsa(ca.cert, 2, 0, 1)),
                ("_25._tcp.mx-512.dane.test", "TLSA " + tlsa(c512[2], 3, 0, 2)),
                ("_25._tcp.mx-full.dane.test", "TLSA " + tlsa(full[2], 3, 1, 0)),
                ("_25._tcp.mx-tan.dane.test", "TLSA " + tlsa(ca.cert, 2, 0, 1)),
                ("_25._tcp.mx-imp.dane.test", "TLSA " + tlsa(genuine[2], 3, 1, 1)),
                ("_25._tcp.mx-unus.dane.test", "TLSA " + tlsa(imp[2], 1, 1, 1)),
                ("_25._tcp.mx-bogus.dane.test", "TLSA " + BOGUS_OK),
                ("_25._tcp.mx.plain.test", "TLSA " + tlsa(genuine[2], 3, 1, 1))]
        cls.zone = SignedZone(cls.dir, "dane.test", zone_text("dane.test", rec), NS)
        cls.zone.corrupt("_25._tcp.mx-bogus.dane.test", "TLSA", "ab" * 32, "cd" * 32)
        plain = SignedZone(cls.dir, "plain.test", zone_text("plain.test", rec), NS, sign=False)
        cls.peers = []
        cls.nsd = cls._peer(Nsd(cls.dir, NS, [("dane.test", cls.zone.path),
                                              ("plain.test", plain.path)]))
        cls.unbound = cls._peer(Unbound(cls.dir, RESOLVER,
                                        [("dane.test", NS), ("plain.test", NS)],
                                        [cls.zone.anchor], probe="mx-ee.dane.test"))
        cls.sinks = {}
        for addr, cert in ((EE, ee), (TA, ta), (S512, c512), (FULL, full), (IMP, imp),
                           (TAN, tan)):
            cls.sinks[addr] = cls._peer(AioSink(addr, tls_context=server_tls_context(*cert[:2])))

    @classmethod
    def _peer(cls, p):
        cls.peers.append(p.start())
        return p

    @classmethod
    def tearDownClass(cls):
        for p in reversed(cls.peers):
            p.stop()

    def tearDown(self):
        codes = [(n.name, n.stop()) for n in self.nodes if n.alive()]
        super().tearDown()
        for name, rc in codes:
            self.assertEqual(rc, 0, "relayd %s exit code on SIGTERM" % name)

    def node(self, **keys):
        kw = {"dns_servers": RESOLVER + ":53", "dns_dnssec_trusted": "yes", "retry_base": "1s",
              "retry_max": "2s", "log_level": "debug",
              "tls_policy": " ".join("%s=%s" % (d, lv) for d, (_, lv) in DOMAINS.items())}
        kw.update(keys)
        n = self.relayd(addr=RELAY, port=PORT, **kw)
        n.start()
        return n

    def send(self, rcpt, subject="t"):
        with smtplib.SMTP(RELAY, PORT, timeout=20) as s:
            s.ehlo("client.test")
            self.assertEqual(s.mail("sender@src.test")[0], 250)
            self.assertEqual(s.rcpt(rcpt)[0], 250)
            code, text = s.data("Subject: %s\r\n\r\nhello\r\n" % subject)
            self.assertEqual(code, 250, text)
            return text.decode().split("queued as ")[1].split()[0]

    def got(self, addr, rcpt, subject="t"):
        return [m for m in self.sinks[addr].snapshot()
                if rcpt in m[1] and ("Subject: %s\r\n" % subject).encode() in m[2]]

    def outcome(self, node, qid, status):
        def find():
            for l in node.log().splitlines():
                if (" %s to=" % qid) in l and ("status=%s " % status) in l:
                    return l
            return None
        return wait_for(find, 30, "%s %s" % (qid, status))

    def delivered(self, node, rcpt, addr, subject="t"):
        qid = self.send(rcpt, subject)
        wait_for(lambda: self.got(addr, rcpt, subject), 20, "%s delivered to %s" % (rcpt, addr))
        self.outcome(node, qid, "sent")
        return qid

    def deferred(self, node, rcpt, addr, subject="t"):
        qid = self.send(rcpt, subject)
        line = self.outcome(node, qid, "deferred")
        self.assertEqual(self.got(addr, rcpt, subject), [], "%s reached %s" % (rcpt, addr))
        self.assertIn("dsn=4.7.5", line)
        return line

    # ------------------------------------------------------------------ DANE authenticates

    def test_dane_ee_and_ta_records_authenticate(self):
        node = self.node()
        for rcpt, addr, host in (("u@ee.dane.test", EE, "mx-ee.dane.test"),
                                 ("u@ta.dane.test", TA, "mx-ta.dane.test"),
                                 ("u@d512.dane.test", S512, "mx-512.dane.test"),
                                 ("u@full.dane.test", FULL, "mx-full.dane.test")):
            self.delivered(node, rcpt, addr)
            self.assertIn("event=tls-verified relay=%s[%s]:25 auth=dane" % (host, addr),
                          node.log())

    def test_impostor_is_refused_under_dane_and_accepted_under_may(self):
        node = self.node()
        line = self.deferred(node, "u@imp.dane.test", IMP)
        self.assertIn("451 4.7.5 TLS: DANE verification failed for mx-imp.dane.test", line)
        self.delivered(node, "u@imp-may.dane.test", IMP)

    def test_dane_ta_checks_the_name(self):
        node = self.node()
        line = self.deferred(node, "u@tan.dane.test", TAN)
        self.assertIn("TLS: DANE verification failed for mx-tan.dane.test: hostname mismatch",
                      line)

    # ------------------------------------------------------------------ fallbacks (RFC 7672 2.2)

    def test_no_tlsa_records(self):
        node = self.node()
        self.delivered(node, "u@notlsa.dane.test", IMP)   # dane: as may
        line = self.deferred(node, "u@notlsa-only.dane.test", IMP)
        self.assertIn("TLS: mx-notlsa.dane.test: no DNSSEC-secure TLSA record (dane-only)", line)

    def test_unusable_tlsa_records(self):
        node = self.node()
        self.delivered(node, "u@unus.dane.test", IMP)     # dane: TLS without authentication
        line = self.deferred(node, "u@unus-only.dane.test", IMP)
        self.assertIn("TLS: mx-unus.dane.test: no usable TLSA record (dane-only)", line)

    def test_bogus_tlsa_answer_skips_the_host(self):
        node = self.node()
        line = self.deferred(node, "u@bogus.dane.test", IMP)
        self.assertIn("451 4.7.5 TLS: TLSA lookup for _25._tcp.mx-bogus.dane.test failed", line)
        self.assertIn("event=tlsa-failed", node.log())

    def test_insecure_mx_or_host_means_no_dane(self):
        node = self.node()
        # an insecure zone's TLSA records are not believed: the impostor gets it (as may)
        self.delivered(node, "u@ins.plain.test", IMP)
        # an insecure MX RRset leading to a DANE host: no DANE either (RFC 7672 2.2.1)
        self.delivered(node, "u@insmx.plain.test", EE)
        self.assertNotIn("relay=mx-ee.dane.test[%s]:25 auth=dane" % EE, node.log())
        line = self.deferred(node, "u@insmx-only.plain.test", EE)
        self.assertIn("not DNSSEC-secure (dane-only)", line)

    def test_ad_bit_is_ignored_unless_the_resolver_is_trusted(self):
        node = self.node(dns_dnssec_trusted="no")
        self.delivered(node, "u@imp.dane.test", IMP, subject="untrusted")
        line = self.deferred(node, "u@ee-only.dane.test", EE, subject="untrusted")
        self.assertIn("not DNSSEC-secure (dane-only)", line)


if __name__ == "__main__":
    unittest.main()
