"""A dead destination's backlog (issue 14): the whole domain is deferred by one DeferDomain
per round instead of one Outcome per message (each recipient is still logged and counted
deferred); other destinations go on; messages whose
queue_lifetime ends while their domain is deferred bounce (the expiry sweep).

Every peer is started here, on 127.0.61.x (this module only): dnsmasq on 127.0.61.53 answers
for the *.test names below and REFUSED for dead.example (no upstream: a temporary DNS error,
every time), so dead.example's destination is dead; live.test's MX is an aiosmtpd sink on
127.0.61.11:25.
"""
import re
import smtplib
import tempfile
import time
import unittest
import urllib.request

from relaytest import RelayTestCase, wait_for
from dsttest import AioSink, Dnsmasq

NET = "127.0.61."
DNS = NET + "53"
RELAY = NET + "1"
PORT = 2525
HTTP = NET + "1:8025"
MX = [("live.test", "mx.live.test", 10)]
A = [("mx.live.test", NET + "11")]


class BacklogTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dnsdir = tempfile.mkdtemp(prefix="relaytest-dns-")
        cls.dns = Dnsmasq(cls.dnsdir, DNS, mx=MX, a=A).start()

    @classmethod
    def tearDownClass(cls):
        cls.dns.stop()

    def setUp(self):
        super().setUp()
        self.sink = AioSink(NET + "11").start()

    def tearDown(self):
        try:
            for n in self.nodes:
                if n.alive():
                    self.assertEqual(n.stop(), 0)
        finally:
            self.sink.stop()
            super().tearDown()

    def node(self, **keys):
        kw = {"dns_servers": DNS + ":53", "http_listen": HTTP, "retry_base": "1s",
              "retry_max": "2s"}
        kw.update(keys)
        n = self.relayd(addr=RELAY, port=PORT, **kw)
        n.start()
        return n

    def send(self, mail_from, rcpt, n=1):
        ids = []
        with smtplib.SMTP(RELAY, PORT, timeout=20) as s:
            s.ehlo("client.test")
            for i in range(n):
                code, text = s.mail(mail_from)
                self.assertEqual(code, 250, text)
                code, text = s.rcpt(rcpt)
                self.assertEqual(code, 250, text)
                code, text = s.data("Subject: %d\r\n\r\nbody %d\r\n" % (i, i))
                self.assertEqual(code, 250, text)
                ids.append(text.decode().split("queued as ")[1].split()[0])
        return ids

    def metrics(self):
        body = urllib.request.urlopen("http://%s/metrics" % HTTP, timeout=5).read().decode()
        m = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                m[k] = float(v)
        return m

    def test_dead_destination_one_entry_per_round(self):
        node = self.node()
        ids = self.send("s@live.test", "u@dead.example", 30)
        # rounds: the backlog's jobs park, one DeferDomain each, no Outcome per message
        wait_for(lambda: self.metrics().get("relay_queue_domain_deferrals_total", 0) >= 3, 30,
                 "three rounds of the dead destination")
        m = self.metrics()
        # each parked recipient still counts (and logs) as deferred, with no Outcome behind it
        self.assertGreaterEqual(m["relay_delivery_jobs_suspended_total"], 30)
        self.assertEqual(m['relay_delivery_recipients_total{result="deferred"}'],
                         m["relay_delivery_jobs_suspended_total"])
        self.assertEqual(m["relay_queue_messages"], 30)
        log = node.log()
        rounds = re.findall(r"event=domain-deferred domain=dead\.example .*deferrals=(\d+)", log)
        self.assertGreaterEqual(len(rounds), 3)
        self.assertEqual(rounds[:3], ["1", "2", "3"])  # the backoff counts them
        deferred = [l for l in log.splitlines() if "status=deferred" in l]
        self.assertGreaterEqual(len(deferred), 30)
        for l in deferred:
            self.assertIn("domain deferred as a whole", l)
        # another destination is not held up by the dead one
        live = self.send("s@live.test", "v@live.test")
        wait_for(lambda: len(self.sink.messages) >= 1, 20, "the live destination's delivery")
        # the queue as stored: every message of the dead domain queued, never attempted
        node.stop()
        q = node.dump_queue()
        self.assertEqual(sorted(q), sorted(ids))
        for i in ids:
            self.assertEqual(q[i]["rcpts"][0]["state"], "queued")
            self.assertEqual(q[i]["rcpts"][0]["attempts"], 0)
        self.assertNotIn(live[0], q)

    def test_expiry_while_deferred_bounces(self):
        # the lifetime ends while the domain is deferred: the sweep bounces them (one DSN
        # each to the sender, at the live sink), no attempt per message
        node = self.node(queue_lifetime="4s", retry_base="3s", retry_max="10s")
        ids = self.send("s@live.test", "u@dead.example", 5)
        wait_for(lambda: len(self.sink.messages) >= 5, 40, "five DSNs")
        for mail_from, rcpts, raw in self.sink.messages[:5]:
            self.assertIn(mail_from, ("", "<>"))  # the null reverse-path (aiosmtpd keeps "<>")
            self.assertEqual(rcpts, ["s@live.test"])
            self.assertIn(b"Status: 4.4.7", raw)
            self.assertIn(b"dead.example", raw)
        # /metrics is a snapshot the node renders on a timer: wait for one taken after the
        # DSNs were delivered (the queue empty again), then check it
        bounced = 'relay_delivery_recipients_total{result="bounced"}'
        snap = {}

        def settled():
            snap.update(self.metrics())
            return snap.get(bounced) == 5 and snap.get("relay_queue_messages") == 0
        wait_for(settled, 20, "the metrics to show the five bounces and an empty queue")
        m = snap
        # deferred: the recipients parked before their lifetime ended (an expired one bounces)
        self.assertLessEqual(m['relay_delivery_recipients_total{result="deferred"}'],
                             m["relay_delivery_jobs_suspended_total"])
        self.assertEqual(m[bounced], 5)
        self.assertGreaterEqual(m["relay_delivery_expired_swept_total"] +
                                m["relay_delivery_jobs_suspended_total"], 1)
        self.assertEqual(len(ids), 5)


if __name__ == "__main__":
    unittest.main()
