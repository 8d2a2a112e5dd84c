"""Delivery (issue 3): MX resolution, failover, retries, bounces (DSN), byte-exact transfer.

Every peer is started here, on 127.0.7.x (this module only): dnsmasq on 127.0.7.53 answers for
the *.test domains below (relayd gets dns_servers = 127.0.7.53:53, never the system resolver),
destinations listen on port 25 of their own address.

  two.test      MX 10 mx1.two.test (127.0.7.11, nothing listens), MX 20 mx2.two.test (.12)
  aonly.test    A 127.0.7.13 only (implicit MX)
  nullmx.test   null MX (RFC 7505)            nx.test   NXDOMAIN
  src.test      the senders' domain: MX mx.src.test (.20) collects the DSNs
  bounce.test   .14 answers 550 to RCPT       retry.test  .15: 451 to the first MAIL
  tempfail.test .16: 451 to every MAIL        greet.test  MX 10 .17 (421 greeting), MX 20 .18
  drop.test     MX 10 .19 (drops mid-DATA), MX 20 .21      slow.test  .22 (slow replies)
  tls.test      .23 offers STARTTLS (and requires it)        notls.test .24 offers no STARTTLS
  badtls.test   .25 offers STARTTLS but its handshake fails
"""
import email
import email.policy
import os
import re
import smtplib
import subprocess
import tempfile
import time
import unittest

from relaytest import RELAYD, RelayTestCase, wait_for
from dsttest import AioSink, Dnsmasq, queue_empty, tls_context
from scripted_server import ScriptedServer

NET = "127.0.7."
DNS = NET + "53"
RELAY = NET + "1"
PORT = 2525

MX = [("two.test", "mx1.two.test", 10), ("two.test", "mx2.two.test", 20),
      ("src.test", "mx.src.test", 10), ("bounce.test", "mx.bounce.test", 10),
      ("retry.test", "mx.retry.test", 10), ("tempfail.test", "mx.tempfail.test", 10),
      ("greet.test", "mx1.greet.test", 10), ("greet.test", "mx2.greet.test", 20),
      ("drop.test", "mx1.drop.test", 10), ("drop.test", "mx2.drop.test", 20),
      ("slow.test", "mx.slow.test", 10), ("tls.test", "mx.tls.test", 10),
      ("notls.test", "mx.notls.test", 10), ("badtls.test", "mx.badtls.test", 10)]
A = [("mx1.two.test", NET + "11"), ("mx2.two.test", NET + "12"), ("aonly.test", NET + "13"),
     ("mx.src.test", NET + "20"), ("mx.bounce.test", NET + "14"), ("mx.retry.test", NET + "15"),
     ("mx.tempfail.test", NET + "16"), ("mx1.greet.test", NET + "17"),
     ("mx2.greet.test", NET + "18"), ("mx1.drop.test", NET + "19"), ("mx2.drop.test", NET + "21"),
     ("mx.slow.test", NET + "22"), ("mx.tls.test", NET + "23"), ("mx.notls.test", NET + "24"),
     ("mx.badtls.test", NET + "25")]


def parse_dsn(raw):
    """(message, [per-recipient field dicts], per-message fields) of a DSN."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1
    blocks = status[0].get_payload()   # compat32: a list of Message, one per field block
    per_msg = dict(blocks[0].items())
    per_rcpt = [dict(b.items()) for b in blocks[1:]]
    return msg, per_rcpt, per_msg


class DeliveryTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dnsdir = tempfile.mkdtemp(prefix="relaytest-dns-")
        cls.dns = Dnsmasq(cls.dnsdir, DNS, mx=MX, a=A, null_mx=["nullmx.test"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.dns.stop()

    def setUp(self):
        super().setUp()
        self.peers = []

    def tearDown(self):
        # A graceful stop while the destinations are still up: exit code 0 (under ASan also:
        # no leak), then the peers.
        codes = []
        try:
            for n in self.nodes:
                if n.alive():
                    codes.append((n.name, n.stop()))
        finally:
            for p in self.peers:
                p.stop()
            super().tearDown()
        for name, rc in codes:
            self.assertEqual(rc, 0, "relayd %s exit code on SIGTERM" % name)

    def peer(self, p):
        self.peers.append(p.start())
        return p

    def node(self, **keys):
        kw = {"dns_servers": DNS + ":53", "retry_base": "1s", "retry_max": "2s"}
        kw.update(keys)
        n = self.relayd(addr=RELAY, port=PORT, **kw)
        n.start()
        return n

    def send(self, mail_from, rcpts, body, mail_options=(), rcpt_options=()):
        with smtplib.SMTP(RELAY, PORT, timeout=20) as s:
            s.ehlo("client.test")
            code, text = s.mail(mail_from, list(mail_options))
            self.assertEqual(code, 250, text)
            for r in rcpts:
                code, text = s.rcpt(r, list(rcpt_options))
                self.assertEqual(code, 250, text)
            code, text = s.data(body)
            self.assertEqual(code, 250, text)
            return text.decode().split("queued as ")[1].split()[0]

    def wait_drained(self, node, timeout=30):
        wait_for(lambda: queue_empty(node), timeout, "the queue to drain")

    def outcome_lines(self, node, qid):
        return [l for l in node.log().splitlines() if (" %s to=" % qid) in l]

    # ---------------------------------------------------------------- routing

    def test_first_mx_down_second_mx_gets_it(self):
        sink = self.peer(AioSink(NET + "12"))
        node = self.node()
        qid = self.send("a@src.test", ["u1@two.test"], "Subject: mx\r\n\r\nhello\r\n")
        wait_for(lambda: sink.count() == 1, 20, "delivery to the second MX")
        self.wait_drained(node)
        lines = self.outcome_lines(node, qid)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("to=<u1@two.test> relay=mx2.two.test[127.0.7.12]:25", lines[0])
        self.assertIn("dsn=2.0.0 status=sent (250 2.0.0 Ok: kept)", lines[0])
        mail_from, rcpts, data = sink.snapshot()[0]
        self.assertEqual((mail_from, rcpts), ("a@src.test", ["u1@two.test"]))

    def test_implicit_mx_from_a_record(self):
        sink = self.peer(AioSink(NET + "13"))
        node = self.node()
        qid = self.send("a@src.test", ["u@aonly.test"], "Subject: a\r\n\r\nimplicit\r\n")
        wait_for(lambda: sink.count() == 1, 20, "delivery to the implicit MX")
        self.wait_drained(node)
        self.assertIn("relay=aonly.test[127.0.7.13]:25", self.outcome_lines(node, qid)[0])

    def test_transport_overrides_mx(self):
        sink = self.peer(AioSink(NET + "13", port=2526))
        node = self.node(transport="two.test=127.0.7.13:2526")
        self.send("a@src.test", ["t@two.test"], "Subject: t\r\n\r\nvia transport\r\n")
        wait_for(lambda: sink.count() == 1, 20, "delivery through the transport route")
        self.wait_drained(node)

    def test_relayhost_brackets_no_mx(self):
        sink = self.peer(AioSink(NET + "13", port=2527))
        node = self.node(relayhost="[127.0.7.13]:2527")
        self.send("a@src.test", ["x@nx.test", "y@nullmx.test"], "Subject: r\r\n\r\nsmarthost\r\n")
        wait_for(lambda: sink.count() == 1, 20, "delivery to the relayhost")
        self.assertEqual(sorted(sink.snapshot()[0][1]), ["x@nx.test", "y@nullmx.test"])
        self.wait_drained(node)

    def test_relayhost_without_brackets_uses_its_mx(self):
        sink = self.peer(AioSink(NET + "12"))
        node = self.node(relayhost="two.test")          # MX of two.test: mx1 down, mx2 up
        self.send("a@src.test", ["z@aonly.test"], "Subject: r\r\n\r\nvia relayhost MX\r\n")
        wait_for(lambda: sink.count() == 1, 20, "delivery to the relayhost's second MX")
        self.wait_drained(node)

    def test_delivery_config_errors_name_the_key(self):
        cases = [("relayhost = [two.test:25\n", "relayhost"),
                 ("relayhost = two.test:99999\n", "relayhost"),
                 ("transport = a.test=bad host:25\n", "transport"),
                 ("retry_base = 10m\nretry_max = 1m\n", "retry_max"),
                 ("max_connections_per_destination = 0\n", "max_connections_per_destination"),
                 ("tls_required_domains = bad..domain\n", "tls_required_domains"),
                 ("connect_timeout = soon\n", "connect_timeout")]
        for text, key in cases:
            p = os.path.join(self.tmp, "bad.conf")
            with open(p, "w") as f:
                f.write("data_dir = %s\n" % self.tmp + text)
            r = subprocess.run([RELAYD, "--config", p, "--print-config"], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(r.returncode, 2, text)
            self.assertIn(key, r.stderr, text)

    # ---------------------------------------------------------------- retries

    def test_451_then_success_after_retry(self):
        srv = self.peer(ScriptedServer(NET + "15", mode="fail_first", fails=1))
        node = self.node(retry_base="1s")
        qid = self.send("a@src.test", ["r@retry.test"], "Subject: retry\r\n\r\nagain\r\n")
        wait_for(lambda: len(srv.messages) == 1, 30, "delivery after the retry")
        self.wait_drained(node)
        lines = self.outcome_lines(node, qid)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("status=deferred (451 4.3.0 try again later)", lines[0])
        self.assertIn("status=sent", lines[1])
        self.assertGreaterEqual(srv.connections, 2)

    def test_421_greeting_and_drop_mid_data_fail_over(self):
        self.peer(ScriptedServer(NET + "17", mode="greet421"))
        ok1 = self.peer(ScriptedServer(NET + "18", mode="ok"))
        drop = self.peer(ScriptedServer(NET + "19", mode="drop_data"))
        ok2 = self.peer(ScriptedServer(NET + "21", mode="ok"))
        node = self.node()
        self.send("a@src.test", ["g@greet.test"], "Subject: g\r\n\r\ngreeting\r\n")
        self.send("a@src.test", ["d@drop.test"], "Subject: d\r\n\r\n" + "body line\r\n" * 50)
        wait_for(lambda: len(ok1.messages) == 1 and len(ok2.messages) == 1, 30,
                 "both messages at the second MX")
        self.assertGreaterEqual(drop.connections, 1)
        self.wait_drained(node)

    def test_slow_replies(self):
        srv = self.peer(ScriptedServer(NET + "22", mode="slow", delay=0.3))
        node = self.node()
        self.send("a@src.test", ["s@slow.test"], "Subject: s\r\n\r\nslow\r\n")
        wait_for(lambda: len(srv.messages) == 1, 30, "delivery to a slow server")
        self.wait_drained(node)

    def test_connection_limits_and_reuse(self):
        slow = self.peer(ScriptedServer(NET + "22", mode="slow", delay=0.05))
        aonly = self.peer(AioSink(NET + "13"))
        node = self.node(max_connections_per_destination=2, max_deliveries=2,
                         max_messages_per_connection=4)
        for i in range(12):
            self.send("a@src.test", ["s%d@slow.test" % i], "Subject: %d\r\n\r\nx\r\n" % i)
            self.send("a@src.test", ["a%d@aonly.test" % i], "Subject: %d\r\n\r\nx\r\n" % i)
        wait_for(lambda: len(slow.messages) == 12 and aonly.count() == 12, 60,
                 "24 deliveries through 2 connections")
        self.wait_drained(node)
        # relayd holds at most 2 connections to the destination; the server's own count of
        # open sockets can lag behind a close under load, its transaction count cannot
        self.assertLessEqual(slow.max_txn, 2)
        self.assertGreaterEqual(slow.connections, 3)   # at most 4 messages per connection
        self.assertLess(slow.connections, 12)          # but connections are reused

    def test_rate_limit_per_destination(self):
        # 300 a minute = 5 a second, bursts of 5: 20 messages take about 3 s
        sink = self.peer(AioSink(NET + "13"))
        node = self.node(max_messages_per_minute_per_destination=300)
        with smtplib.SMTP(RELAY, PORT, timeout=20) as s:
            for i in range(20):
                s.sendmail("a@src.test", ["r%d@aonly.test" % i], "Subject: %d\r\n\r\nx\r\n" % i)
        wait_for(lambda: sink.count() == 20, 30, "20 deliveries")
        t = sorted(sink.times)
        self.assertGreaterEqual(t[-1] - t[0], 2.4, "20 messages at 5/s after a burst of 5")
        for a in t:  # no second holds more than the burst plus a second's rate (+1 slack)
            self.assertLessEqual(sum(1 for b in t if a <= b < a + 1.0), 11, t)
        self.wait_drained(node)

    # ---------------------------------------------------------------- bounces

    def test_550_bounces_with_dsn_to_sender(self):
        self.peer(ScriptedServer(NET + "14", mode="rcpt550"))
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node()
        qid = self.send("sender@src.test", ["nouser@bounce.test"],
                        "Subject: will bounce\r\nMessage-ID: <b1@src.test>\r\n\r\nbody\r\n",
                        mail_options=["RET=HDRS", "ENVID=env+2B1"],
                        rcpt_options=["ORCPT=rfc822;orig+2Bx@bounce.test"])
        wait_for(lambda: dsns.count() == 1, 20, "the DSN at the sender's domain")
        self.wait_drained(node)
        mail_from, rcpts, raw = dsns.snapshot()[0]
        self.assertIn(mail_from, ("", "<>"))         # reverse-path <> (aiosmtpd keeps "<>")
        self.assertEqual(rcpts, ["sender@src.test"])
        msg, per_rcpt, per_msg = parse_dsn(raw)
        self.assertIn("node1.relay.test", per_msg["Reporting-MTA"])
        self.assertIn("Arrival-Date", per_msg)
        self.assertEqual(len(per_rcpt), 1)
        r = per_rcpt[0]
        self.assertEqual(r["Final-Recipient"], "rfc822; nouser@bounce.test")
        self.assertEqual(r["Action"], "failed")
        self.assertTrue(r["Status"].startswith("5."), r["Status"])
        self.assertEqual(r["Status"], "5.1.1")
        self.assertIn("550 5.1.1", r["Diagnostic-Code"])
        self.assertIn("mx.bounce.test", r.get("Remote-MTA", ""))
        self.assertEqual(r["Original-Recipient"].replace(" ", ""), "rfc822;orig+x@bounce.test")
        self.assertEqual(per_msg.get("Original-Envelope-Id"), "env+1")
        self.assertIn(b"Message-ID: <b1@src.test>", raw)   # the original's headers come back
        self.assertTrue(any(p.get_content_type() == "text/rfc822-headers" for p in msg.walk()))
        self.assertNotIn(b"\r\n\r\nbody\r\n", raw.split(b"text/rfc822-headers", 1)[1])
        self.assertIn("status=bounced", self.outcome_lines(node, qid)[0])

    def test_null_mx_and_nxdomain_one_dsn(self):
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node()
        self.send("sender@src.test", ["a@nullmx.test", "b@nx.test"], "Subject: n\r\n\r\nx\r\n")
        wait_for(lambda: dsns.count() >= 1, 20, "the DSN")
        self.wait_drained(node)
        self.assertEqual(dsns.count(), 1)             # one DSN per message and reason
        _, per_rcpt, _ = parse_dsn(dsns.snapshot()[0][2])
        by = {r["Final-Recipient"].split(";")[1].strip(): r for r in per_rcpt}
        self.assertEqual(by["a@nullmx.test"]["Status"], "5.1.10")
        self.assertEqual(by["b@nx.test"]["Status"], "5.1.2")
        for r in per_rcpt:
            self.assertEqual(r["Action"], "failed")

    def test_expired_lifetime_bounces(self):
        srv = self.peer(ScriptedServer(NET + "16", mode="always451"))
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node(queue_lifetime="3s", retry_base="1s", retry_max="1s")
        qid = self.send("sender@src.test", ["late@tempfail.test"], "Subject: e\r\n\r\nx\r\n")
        wait_for(lambda: dsns.count() == 1, 30, "the expiry DSN")
        self.wait_drained(node)
        _, per_rcpt, _ = parse_dsn(dsns.snapshot()[0][2])
        self.assertEqual(per_rcpt[0]["Action"], "failed")
        self.assertIn("451 4.3.0", per_rcpt[0]["Diagnostic-Code"])
        lines = self.outcome_lines(node, qid)
        self.assertIn("status=deferred", lines[0])
        self.assertIn("status=bounced", lines[-1])
        self.assertIn("lifetime", lines[-1])
        self.assertGreaterEqual(srv.connections, 2)

    def test_null_sender_failure_no_dsn(self):
        self.peer(ScriptedServer(NET + "14", mode="rcpt550"))
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node()
        qid = self.send("", ["nouser@bounce.test"], "Subject: from <>\r\n\r\nx\r\n")
        wait_for(lambda: any("status=bounced" in l for l in self.outcome_lines(node, qid)), 20,
                 "the bounce")
        self.wait_drained(node)
        self.assertNotIn("event=dsn", node.log())
        self.assertEqual(dsns.count(), 0)

    def test_notify_success_and_never(self):
        sink = self.peer(AioSink(NET + "13"))
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node()
        self.send("sender@src.test", ["ok@aonly.test"], "Subject: s\r\n\r\nx\r\n",
                  rcpt_options=["NOTIFY=SUCCESS"])
        wait_for(lambda: dsns.count() == 1, 20, "the success DSN")
        _, per_rcpt, _ = parse_dsn(dsns.snapshot()[0][2])
        self.assertEqual(per_rcpt[0]["Action"], "delivered")
        self.assertEqual(per_rcpt[0]["Status"], "2.0.0")
        self.peer(ScriptedServer(NET + "14", mode="rcpt550"))
        qid = self.send("sender@src.test", ["quiet@bounce.test"], "Subject: q\r\n\r\nx\r\n",
                        rcpt_options=["NOTIFY=NEVER"])
        wait_for(lambda: any("status=bounced" in l for l in self.outcome_lines(node, qid)), 20,
                 "the bounce")
        self.wait_drained(node)
        self.assertEqual(dsns.count(), 1)
        self.assertEqual(sink.count(), 1)

    def test_delay_dsn_once_then_failure(self):
        self.peer(ScriptedServer(NET + "16", mode="always451"))
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node(delay_warning_time="1s", queue_lifetime="5s", retry_base="1s",
                         retry_max="1s")
        self.send("sender@src.test", ["slowpoke@tempfail.test"], "Subject: d\r\n\r\nx\r\n",
                  rcpt_options=["NOTIFY=DELAY,FAILURE"])
        wait_for(lambda: dsns.count() == 2, 30, "the delay DSN, then the failure DSN")
        self.wait_drained(node)
        actions = [parse_dsn(m[2])[1][0]["Action"] for m in dsns.snapshot()]
        self.assertEqual(actions, ["delayed", "failed"])
        _, per_rcpt, _ = parse_dsn(dsns.snapshot()[0][2])
        self.assertIn("Will-Retry-Until", per_rcpt[0])

    # ---------------------------------------------------------------- TLS

    def test_starttls_opportunistic_and_required(self):
        tls = self.peer(AioSink(NET + "23", tls_context=tls_context(self.tmp, "mx.tls.test")))
        plain = self.peer(AioSink(NET + "24"))
        node = self.node(tls_required_domains="notls.test")
        self.send("a@src.test", ["t@tls.test"], "Subject: tls\r\n\r\nover TLS\r\n")
        wait_for(lambda: tls.count() == 1, 20, "delivery over STARTTLS")
        self.assertEqual(tls.tls, [True])
        qid = self.send("a@src.test", ["p@notls.test"], "Subject: req\r\n\r\nx\r\n")
        wait_for(lambda: any("status=deferred" in l for l in self.outcome_lines(node, qid)), 20,
                 "the deferral (TLS required, not offered)")
        line = [l for l in self.outcome_lines(node, qid) if "status=deferred" in l][0]
        self.assertIn("4.7.4", line)
        self.assertEqual(plain.count(), 0)

    def test_failed_opportunistic_tls_falls_back_to_plaintext(self):
        srv = self.peer(ScriptedServer(NET + "25", mode="badtls"))
        node = self.node()
        qid = self.send("a@src.test", ["b@badtls.test"], "Subject: b\r\n\r\nplain\r\n")
        wait_for(lambda: len(srv.messages) == 1, 20, "delivery in plaintext after TLS failed")
        self.wait_drained(node)
        self.assertEqual(srv.connections, 2)
        self.assertIn("event=tls-failed", node.log())
        self.assertIn("status=sent", self.outcome_lines(node, qid)[0])

    # ---------------------------------------------------------------- shutdown

    def test_sigterm_during_delivery_keeps_the_message(self):
        slow = self.peer(ScriptedServer(NET + "22", mode="slow", delay=2.0))
        node = self.node()
        qid = self.send("a@src.test", ["s@slow.test"], "Subject: s\r\n\r\nslow\r\n")
        wait_for(lambda: slow.connections >= 1, 10, "the delivery connection")
        t0 = time.monotonic()
        self.assertEqual(node.stop(), 0)
        self.assertLess(time.monotonic() - t0, 5.0)
        self.assertIn(qid, node.dump_queue())          # still queued: nothing was decided
        slow.stop()
        self.peers.remove(slow)
        ok = self.peer(ScriptedServer(NET + "22", mode="ok"))
        node.start()
        wait_for(lambda: len(ok.messages) == 1, 20, "delivery after the restart")
        self.wait_drained(node)

    def test_restart_resumes_due_mail_without_new_traffic(self):
        slow = self.peer(ScriptedServer(NET + "22", mode="slow", delay=5.0))
        node = self.node()
        self.send("a@src.test", ["k@slow.test"], "Subject: k\r\n\r\nkilled\r\n")
        wait_for(lambda: slow.connections >= 1, 10, "the delivery connection")
        node.kill()                                     # SIGKILL: no outcome was proposed
        slow.stop()
        self.peers.remove(slow)
        ok = self.peer(ScriptedServer(NET + "22", mode="ok"))
        node.start()                                    # nobody connects: the scheduler alone
        wait_for(lambda: len(ok.messages) == 1, 20, "delivery resumed at startup")
        self.wait_drained(node)

    # ---------------------------------------------------------------- content

    def test_many_recipients_across_domains(self):
        two = self.peer(AioSink(NET + "12"))
        aonly = self.peer(AioSink(NET + "13"))
        self.peer(ScriptedServer(NET + "14", mode="rcpt550"))
        dsns = self.peer(AioSink(NET + "20"))
        node = self.node()
        rcpts = ["r%d@two.test" % i for i in range(120)] + ["x@aonly.test", "y@aonly.test",
                                                            "gone@bounce.test"]
        qid = self.send("sender@src.test", rcpts, "Subject: many\r\n\r\nmany\r\n")
        wait_for(lambda: dsns.count() == 1, 30, "the DSN for the one failure")
        self.wait_drained(node)
        got_two = sorted(r for m in two.snapshot() for r in m[1])
        self.assertEqual(got_two, sorted(rcpts[:120]))
        self.assertEqual(two.count(), 2)              # 120 recipients: two transactions of <= 100
        self.assertEqual(sorted(aonly.snapshot()[0][1]), ["x@aonly.test", "y@aonly.test"])
        self.assertEqual(aonly.count(), 1)            # one transaction per domain
        lines = self.outcome_lines(node, qid)
        self.assertEqual(len(lines), 123)
        self.assertEqual(sum("status=sent" in l for l in lines), 122)

    def test_body_byte_exact(self):
        sink = self.peer(AioSink(NET + "13"))
        node = self.node()
        body = (b"Subject: exact\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                b"\r\n"
                b".leading dot\r\n..two dots\r\n.\r\n . space dot\r\n"
                b"8-bit: \xc3\xa9\xc3\xa0\xe2\x82\xac \xff\xfe raw\r\n"
                + b"L" * 990 + b"\r\n"
                + b"\r\n\r\nblank lines above\r\n"
                + b"end without dot\r\n")
        qid = self.send("a@src.test", ["exact@aonly.test"], body, mail_options=["BODY=8BITMIME"])
        wait_for(lambda: sink.count() == 1, 20, "delivery")
        data = sink.snapshot()[0][2]
        self.assertTrue(data.startswith(b"Received: "), data[:100])
        self.assertTrue(data.endswith(body), data[-300:])
        self.assertIn(qid.encode(), data.split(b"\r\n\r\n")[0])
        self.wait_drained(node)


if __name__ == "__main__":
    unittest.main()
