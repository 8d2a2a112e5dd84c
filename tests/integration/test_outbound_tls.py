"""Outbound TLS (issue 13 part 4): tls_policy levels may/encrypt/verify and MTA-STS (RFC 8461).

Real parts only, on 127.0.41.x (this module only): dnsmasq (.53) answers MX, A and the
_mta-sts TXT records; an HTTPS server (Python's http.server over ssl, .80:443) serves the
policies with a certificate of the test CA; a second one (.81:443) has a certificate of another
CA; the destinations are aiosmtpd with STARTTLS (required by them).

  mx.good.test  .10  certificate of the test CA naming mx.good.test
  mx.imp.test   .11  an impostor: a certificate naming mx.imp.test, from ANOTHER CA
  mx.wrong.test .12  certificate of the test CA, but naming other.test
  mx.src.test   .20  plain sink: the senders' domain (DSNs)
  .13                certificate of the test CA for the IP address 127.0.41.13 (a transport
                     route [127.0.41.13]:25 for iplit.test, level verify)

Domains (tls_policy in the relay's config, MTA-STS by TXT + policy):
  v-ok.test -> good (verify)          v-imp.test -> imp (verify)       v-wrong.test -> wrong
  may-imp.test -> imp (may)           enc-imp.test -> imp (encrypt)
  enf.test -> good, policy enforce mx: *.good.test
  enf-imp.test -> imp, policy enforce mx: mx.imp.test
  enf-mx.test -> good, policy enforce mx: mx.other.test (the MX is not in the policy)
  tst-imp.test -> imp, policy testing mx: mx.imp.test
  badfetch.test -> imp, policy enforce, but served by the impostor HTTPS server: no policy
  html.test -> imp, policy enforce but served as text/html: no policy
  big.test -> imp, a policy body over 64 KB: no policy
  redir.test -> imp, the policy URL answers 301: not followed, no policy
  hang.test -> imp, mta-sts.hang.test (.82:443) accepts and never answers
"""
import os
import re
import smtplib
import tempfile
import unittest

from relaytest import RelayTestCase, wait_for
from dsttest import (AioSink, Dnsmasq, HangServer, HttpsServer, TestCA, queue_empty,
                     server_tls_context)

# The impostor sends its CA along: OpenSSL says "self-signed certificate in certificate chain".
UNTRUSTED = r"(self-signed certificate in certificate chain|unable to get local issuer certificate)"

NET = "127.0.41."
DNS = NET + "53"
RELAY = NET + "1"
PORT = 2525
GOOD, IMP, WRONG, SRC, IPLIT = NET + "10", NET + "11", NET + "12", NET + "20", NET + "13"
HTTPS_GOOD, HTTPS_IMP, HTTPS_HANG = NET + "80", NET + "81", NET + "82"

MX = [("v-ok.test", "mx.good.test", 10), ("v-imp.test", "mx.imp.test", 10),
      ("v-wrong.test", "mx.wrong.test", 10), ("may-imp.test", "mx.imp.test", 10),
      ("enc-imp.test", "mx.imp.test", 10), ("enf.test", "mx.good.test", 10),
      ("enf-imp.test", "mx.imp.test", 10), ("enf-mx.test", "mx.good.test", 10),
      ("tst-imp.test", "mx.imp.test", 10), ("badfetch.test", "mx.imp.test", 10),
      ("html.test", "mx.imp.test", 10), ("src.test", "mx.src.test", 10),
      ("life.test", "mx.imp.test", 10), ("big.test", "mx.imp.test", 10),
      ("redir.test", "mx.imp.test", 10), ("hang.test", "mx.imp.test", 10)]
STS_DOMAINS = ["enf.test", "enf-imp.test", "enf-mx.test", "tst-imp.test", "html.test",
               "big.test", "redir.test"]
A = [("mx.good.test", GOOD), ("mx.imp.test", IMP), ("mx.wrong.test", WRONG),
     ("mx.src.test", SRC), ("mta-sts.badfetch.test", HTTPS_IMP),
     ("mta-sts.hang.test", HTTPS_HANG)] + \
    [("mta-sts." + d, HTTPS_GOOD) for d in STS_DOMAINS]
TXT = [("_mta-sts." + d, "v=STSv1; id=%s1" % d.split(".")[0].replace("-", ""))
       for d in STS_DOMAINS + ["badfetch.test", "hang.test"]]

LEVELS = ("v-ok.test=verify v-imp.test=verify v-wrong.test=verify may-imp.test=may "
          "enc-imp.test=encrypt life.test=verify iplit.test=verify")


def policy(mode, *mx, max_age=86400):
    return "version: STSv1\r\nmode: %s\r\n%smax_age: %d\r\n" % (
        mode, "".join("mx: %s\r\n" % m for m in mx), max_age)


class OutboundTlsTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="relaytest-outtls-")
        cls.ca = TestCA(cls.dir, "Relay Test CA")
        cls.other = TestCA(cls.dir, "Impostor CA")
        cls.dns = Dnsmasq(cls.dir, DNS, mx=MX, a=A, txt=TXT).start()
        cls.peers = []
        good = cls.ca.issue("mx.good.test")
        imp = cls.other.issue("mx.imp.test")
        wrong = cls.ca.issue("other.test")
        cls.good = cls._peer(AioSink(GOOD, tls_context=server_tls_context(*good[:2])))
        cls.imp = cls._peer(AioSink(IMP, tls_context=server_tls_context(*imp[:2])))
        cls.wrong = cls._peer(AioSink(WRONG, tls_context=server_tls_context(*wrong[:2])))
        cls.src = cls._peer(AioSink(SRC))
        iplit = cls.ca.issue("iplit", ["IP:" + IPLIT])
        cls.iplit = cls._peer(AioSink(IPLIT, tls_context=server_tls_context(*iplit[:2])))
        web = cls.ca.issue("mta-sts.enf.test", ["mta-sts." + d for d in STS_DOMAINS])
        cls.web = cls._peer(HttpsServer(HTTPS_GOOD, web[0], web[1], {
            "mta-sts.enf.test": (200, "text/plain", policy("enforce", "*.good.test")),
            "mta-sts.enf-imp.test": (200, "text/plain; charset=utf-8",
                                     policy("enforce", "mx.imp.test")),
            "mta-sts.enf-mx.test": (200, "text/plain", policy("enforce", "mx.other.test")),
            "mta-sts.tst-imp.test": (200, "text/plain", policy("testing", "mx.imp.test")),
            "mta-sts.html.test": (200, "text/html", policy("enforce", "mx.imp.test")),
            "mta-sts.big.test": (200, "text/plain",
                                 policy("enforce", "mx.good.test") + "x: " + "y" * 70000),
            "mta-sts.redir.test": (301, "text/plain", policy("enforce", "mx.good.test")),
        }))
        cls.hang = cls._peer(HangServer(HTTPS_HANG, 443))
        badweb = cls.other.issue("mta-sts.badfetch.test")
        cls.badweb = cls._peer(HttpsServer(HTTPS_IMP, badweb[0], badweb[1], {
            "mta-sts.badfetch.test": (200, "text/plain", policy("enforce", "mx.good.test"))}))

    @classmethod
    def _peer(cls, p):
        cls.peers.append(p.start())
        return p

    @classmethod
    def tearDownClass(cls):
        for p in cls.peers:
            p.stop()
        cls.dns.stop()

    def tearDown(self):
        codes = [(n.name, n.stop()) for n in self.nodes if n.alive()]
        super().tearDown()
        for name, rc in codes:
            self.assertEqual(rc, 0, "relayd %s exit code on SIGTERM" % name)

    def node(self, **keys):
        kw = {"dns_servers": DNS + ":53", "retry_base": "1s", "retry_max": "2s",
              "tls_ca_file": self.ca.cert, "tls_policy": LEVELS}
        kw.update(keys)
        n = self.relayd(addr=RELAY, port=PORT, **kw)
        n.start()
        return n

    def send(self, rcpt, subject="t", mail_from="sender@src.test"):
        with smtplib.SMTP(RELAY, PORT, timeout=20) as s:
            s.ehlo("client.test")
            code, text = s.mail(mail_from)
            self.assertEqual(code, 250, text)
            code, text = s.rcpt(rcpt)
            self.assertEqual(code, 250, text)
            code, text = s.data("Subject: %s\r\n\r\nhello\r\n" % subject)
            self.assertEqual(code, 250, text)
            return text.decode().split("queued as ")[1].split()[0]

    @staticmethod
    def got(sink, rcpt):
        return [m for m in sink.snapshot() if rcpt in m[1]]

    def outcome(self, node, qid, status):
        """The first outcome line of qid with status= (waits for it)."""
        def find():
            for l in node.log().splitlines():
                if (" %s to=" % qid) in l and ("status=%s " % status) in l:
                    return l
            return None
        return wait_for(find, 30, "%s %s" % (qid, status))

    # ------------------------------------------------------------------ levels

    def test_verify_delivers_to_a_host_the_ca_vouches_for(self):
        node = self.node()
        qid = self.send("u@v-ok.test")
        wait_for(lambda: self.got(self.good, "u@v-ok.test"), 20, "delivery to mx.good.test")
        line = self.outcome(node, qid, "sent")
        self.assertIn("relay=mx.good.test[%s]:25" % GOOD, line)

    def test_verify_refuses_an_impostor_and_may_accepts_it(self):
        node = self.node()
        q1 = self.send("u@v-imp.test")
        q2 = self.send("u@may-imp.test")
        q3 = self.send("u@enc-imp.test")
        wait_for(lambda: self.got(self.imp, "u@may-imp.test"), 20, "may: delivered")
        wait_for(lambda: self.got(self.imp, "u@enc-imp.test"), 20, "encrypt: delivered")
        line = self.outcome(node, q1, "deferred")
        self.assertIn("dsn=4.7.5", line)
        self.assertRegex(line, r"status=deferred \(451 4\.7\.5 TLS: certificate verification "
                         r"failed for mx\.imp\.test: " + UNTRUSTED + r"\)")
        self.outcome(node, q2, "sent")
        self.outcome(node, q3, "sent")
        self.assertEqual(self.got(self.imp, "u@v-imp.test"), [], "verify: the impostor got it")
        self.assertIn("event=tls-verify-failed relay=mx.imp.test[%s]:25 auth=pkix" % IMP,
                      node.log())

    def test_verify_checks_the_name(self):
        node = self.node()
        qid = self.send("u@v-wrong.test")
        line = self.outcome(node, qid, "deferred")
        self.assertIn("TLS: certificate verification failed for mx.wrong.test: hostname "
                      "mismatch", line)
        self.assertEqual(self.got(self.wrong, "u@v-wrong.test"), [])

    def test_verify_an_address_literal_route(self):
        node = self.node(transport="iplit.test=[%s]:25" % IPLIT)
        qid = self.send("u@iplit.test")
        wait_for(lambda: self.got(self.iplit, "u@iplit.test"), 20, "delivery by address")
        self.outcome(node, qid, "sent")

    def test_without_the_ca_verify_fails_closed(self):
        # The system store does not know the test CA: verify refuses mx.good.test too.
        node = self.node(tls_ca_file="")
        qid = self.send("u@v-ok.test", subject="no-ca")
        line = self.outcome(node, qid, "deferred")
        self.assertIn("TLS: certificate verification failed for mx.good.test", line)

    def test_a_failing_policy_bounces_at_queue_lifetime(self):
        node = self.node(queue_lifetime="3s")
        qid = self.send("u@life.test", subject="lifetime")
        line = self.outcome(node, qid, "bounced")
        self.assertIn("queue lifetime expired; last error: 451 4.7.5 TLS: certificate "
                      "verification failed for mx.imp.test", line)

        def dsn():
            return [m for m in self.src.snapshot()
                    if "sender@src.test" in m[1] and b"life.test" in m[2]]
        got = wait_for(dsn, 30, "the DSN")
        # an expiry is Status 4.4.7 (delivery time expired, RFC 3463); the TLS reason is the
        # Diagnostic-Code of the last attempt
        self.assertIn(b"Action: failed\r\nStatus: 4.4.7\r\n", got[0][2])
        self.assertIn(b"Diagnostic-Code: smtp; 451 4.7.5 TLS: certificate verification failed",
                      got[0][2])
        wait_for(lambda: queue_empty(node), 30, "the queue to drain")

    # ------------------------------------------------------------------ MTA-STS

    def test_sts_enforce_delivers_to_a_matching_verified_mx_and_caches(self):
        node = self.node()
        before = self.web.count("mta-sts.enf.test")
        q1 = self.send("u1@enf.test")
        wait_for(lambda: self.got(self.good, "u1@enf.test"), 20, "enforce: delivered")
        self.outcome(node, q1, "sent")
        self.assertIn("event=mta-sts-policy domain=enf.test id=enf1 mode=enforce "
                      "max_age=86400 mx=*.good.test", node.log())
        self.assertEqual(self.web.count("mta-sts.enf.test"), before + 1)
        q2 = self.send("u2@enf.test")
        wait_for(lambda: self.got(self.good, "u2@enf.test"), 20, "second: delivered")
        self.outcome(node, q2, "sent")
        self.assertEqual(self.web.count("mta-sts.enf.test"), before + 1, "policy fetched twice")

    def test_sts_enforce_refuses_an_impostor(self):
        node = self.node()
        qid = self.send("u@enf-imp.test")
        line = self.outcome(node, qid, "deferred")
        self.assertIn("dsn=4.7.5", line)
        self.assertIn("TLS: certificate verification failed for mx.imp.test", line)
        self.assertIn("auth=mta-sts", node.log())
        self.assertEqual(self.got(self.imp, "u@enf-imp.test"), [])

    def test_sts_enforce_skips_an_mx_outside_the_policy(self):
        node = self.node()
        qid = self.send("u@enf-mx.test")
        line = self.outcome(node, qid, "deferred")
        self.assertIn("MTA-STS: mx.good.test is not an MX host of the policy of enf-mx.test",
                      line)
        self.assertEqual(self.got(self.good, "u@enf-mx.test"), [])

    def test_sts_testing_delivers_and_logs(self):
        node = self.node()
        qid = self.send("u@tst-imp.test")
        wait_for(lambda: self.got(self.imp, "u@tst-imp.test"), 20, "testing: delivered")
        self.outcome(node, qid, "sent")
        self.assertRegex(node.log(), r"event=mta-sts-testing domain=tst-imp.test "
                         r"relay=mx.imp.test\[127.0.41.11\]:25 failure=\"certificate "
                         r"verification failed: " + UNTRUSTED + "\"")

    def test_sts_policy_fetch_is_verified(self):
        # The policy server's certificate is from another CA: no policy, so the impostor MX
        # gets the mail under the default level (may), and the failure is logged.
        node = self.node()
        qid = self.send("u@badfetch.test")
        wait_for(lambda: self.got(self.imp, "u@badfetch.test"), 20, "delivered without policy")
        self.outcome(node, qid, "sent")
        self.assertRegex(node.log(), r"event=mta-sts-fetch-failed domain=badfetch.test "
                         r"id=badfetch1 error=\"[^\"]*certificate[^\"]*\" cached=no")

    def test_sts_policy_must_be_text_plain(self):
        node = self.node()
        qid = self.send("u@html.test")
        wait_for(lambda: self.got(self.imp, "u@html.test"), 20, "delivered without policy")
        self.outcome(node, qid, "sent")
        self.assertIn("event=mta-sts-fetch-failed domain=html.test id=html1 error=\"media type "
                      "'text/html' is not text/plain\"", node.log())

    def test_sts_policy_size_is_bounded(self):
        node = self.node()
        qid = self.send("u@big.test")
        wait_for(lambda: self.got(self.imp, "u@big.test"), 20, "delivered without policy")
        self.outcome(node, qid, "sent")
        self.assertIn("event=mta-sts-fetch-failed domain=big.test id=big1 error=\"response "
                      "larger than the bound\"", node.log())

    def test_sts_redirect_is_not_followed(self):
        node = self.node()
        qid = self.send("u@redir.test")
        wait_for(lambda: self.got(self.imp, "u@redir.test"), 20, "delivered without policy")
        self.outcome(node, qid, "sent")
        self.assertIn("event=mta-sts-fetch-failed domain=redir.test id=redir1 error=\"HTTP "
                      "status 301\"", node.log())

    def test_shutdown_during_a_policy_fetch(self):
        # The fetch is stuck in its TLS handshake; SIGTERM cancels it and relayd exits 0
        # (tearDown checks the code; under ASan that also means nothing leaked).
        node = self.node()
        before = self.hang.accepted
        self.send("u@hang.test")
        wait_for(lambda: self.hang.accepted > before, 20, "the policy fetch to connect")
        self.assertEqual(node.stop(), 0)
        self.assertEqual(self.got(self.imp, "u@hang.test"), [])

    def test_sts_off(self):
        node = self.node(mta_sts="no")
        qid = self.send("u@enf-imp.test", subject="sts-off")
        wait_for(lambda: [m for m in self.got(self.imp, "u@enf-imp.test")
                          if b"sts-off" in m[2]], 20, "delivered with mta_sts = no")
        self.outcome(node, qid, "sent")
        self.assertNotIn("event=mta-sts", node.log())


if __name__ == "__main__":
    unittest.main()
