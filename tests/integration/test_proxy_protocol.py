"""PROXY protocol v1 and v2 through a real HAProxy (send-proxy / send-proxy-v2).

relayd believes a PROXY header only from proxy_from (HAProxy's source address 127.0.10.5) and
then uses the original client address for relay policy and logs; a PROXY header from anyone else
is refused.  Address range: 127.0.10.x (this module only).
"""
import os
import re
import smtplib
import subprocess

from relaytest import RelayTestCase, SmtpConn, _procs, port_open, wait_for

RELAY = "127.0.10.10"
LB = "127.0.10.1"
LB_SRC = "127.0.10.5"
TRUSTED = "127.0.10.99"
UNTRUSTED = "127.0.10.98"

HAPROXY_CFG = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp_v1
    bind {lb}:2525
    default_backend relay_v1
frontend smtp_v2
    bind {lb}:2526
    default_backend relay_v2
backend relay_v1
    server n1 {relay}:2525 send-proxy source {src}
backend relay_v2
    server n1 {relay}:2525 send-proxy-v2 source {src}
"""


class ProxyProtocolTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.node = self.relayd(addr=RELAY, port=2525, proxy_from=LB_SRC + "/32",
                                mynetworks=TRUSTED + "/32")
        self.node.start()
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(lb=LB, relay=RELAY, src=LB_SRC))
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg],
                                        stdout=open(os.path.join(self.tmp, "haproxy.log"), "w"),
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _procs.append(self.haproxy)
        wait_for(lambda: port_open(LB, 2525) and port_open(LB, 2526), 15, "haproxy listening")

    def tearDown(self):
        self.haproxy.kill()
        self.haproxy.wait(10)
        super().tearDown()

    def send_via(self, port, source, rcpt):
        with smtplib.SMTP(LB, port, local_hostname="c.test", source_address=(source, 0),
                          timeout=15) as s:
            s.ehlo()
            s.mail("a@c.test")
            code, text = s.rcpt(rcpt)
            if code != 250:
                return code, text
            return s.data("Subject: via haproxy\r\n\r\nhi\r\n")

    def test_v1_and_v2_give_the_real_client(self):
        for port in (2525, 2526):
            # the trusted client may relay anywhere: policy sees 127.0.10.99, not HAProxy
            code, text = self.send_via(port, TRUSTED, "x@far.example")
            self.assertEqual(code, 250, text)
            # the untrusted one may not, although HAProxy's own address is the same
            code, text = self.send_via(port, UNTRUSTED, "x@far.example")
            self.assertEqual(code, 554, text)
        log = self.node.log()
        self.assertRegex(log, r"event=connect client=%s trusted=yes via=%s" %
                         (re.escape(TRUSTED), re.escape(LB_SRC)))
        self.assertRegex(log, r"event=connect client=%s trusted=no via=%s" %
                         (re.escape(UNTRUSTED), re.escape(LB_SRC)))
        self.assertRegex(log, r"session=S[0-9A-F]+ client=%s from=<a@c.test>" % re.escape(TRUSTED))

    def test_proxy_header_from_others_is_refused(self):
        c = SmtpConn(RELAY, 2525, source=TRUSTED)
        self.assertEqual(c.reply()[0], 220)
        c.send("PROXY TCP4 192.0.2.1 %s 1234 2525\r\n" % RELAY)
        code, lines = c.reply()
        self.assertEqual(code, 421, lines)
        self.assertTrue(c.closed())
        self.assertIn("event=proxy-refused client=%s" % TRUSTED, self.node.log())

    def test_balancer_without_header_is_refused(self):
        c = SmtpConn(RELAY, 2525, source=LB_SRC)
        c.send("EHLO sneaky.test\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 421, lines)
        self.assertTrue(c.closed())
        self.assertTrue(self.node.alive())
        self.assertIn("event=proxy-invalid client=%s" % LB_SRC, self.node.log())


if __name__ == "__main__":
    import unittest
    unittest.main()
