"""relayd's SMTP edge against real clients: Python smtplib, swaks, raw pipelined sockets.

Address: 127.0.2.x (this module only).  The queue is checked through `relayd --dump-queue`.
"""
import base64
import os
import smtplib
import socket
import subprocess
import unittest

from relaytest import RelayTestCase, SmtpConn, wait_for

ADDR = "127.0.2.1"
PORT = 2525
UNTRUSTED = "127.0.0.99"


class SmtpTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        # Only 127.0.2.0/24 is trusted; clients bound to 127.0.0.99 are not.
        self.node = self.relayd(addr=ADDR, port=PORT, mynetworks="127.0.0.1/32, 127.0.2.0/24",
                                relay_domains="relay.example, other.example",
                                max_message_size="64k", max_recipients=5, max_errors=12)
        self.node.start()

    def smtp(self, source=ADDR):
        return smtplib.SMTP(ADDR, PORT, local_hostname="client.test",
                            source_address=(source, 0), timeout=10)

    def queued_id(self, reply_text):
        text = reply_text.decode() if isinstance(reply_text, bytes) else reply_text
        self.assertIn("queued as ", text)
        return text.split("queued as ")[1].split()[0]

    def test_ehlo_advertises_extensions(self):
        with self.smtp() as s:
            code, msg = s.ehlo()
            self.assertEqual(code, 250)
            feats = msg.decode().upper()
            for ext in ("PIPELINING", "SIZE 65536", "8BITMIME", "SMTPUTF8",
                        "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"):
                self.assertIn(ext, feats)
            self.assertNotIn("STARTTLS", feats)   # no certificate configured
            self.assertNotIn("AUTH", feats)
            self.assertEqual(s.verify("someone")[0], 252)
            self.assertEqual(s.noop()[0], 250)
            self.assertEqual(s.docmd("HELP")[0], 214)

    def test_plain_send_is_queued_with_envelope(self):
        body = "Subject: hello\r\n\r\nline one\r\n.leading dot\r\n"
        with self.smtp() as s:
            s.ehlo()
            code, text = s.mail("sender@client.test", ["size=%d" % len(body), "RET=HDRS",
                                                       "ENVID=abc+2Bdef"])
            self.assertEqual(code, 250)
            self.assertEqual(s.rcpt("a@dest.example", ["NOTIFY=SUCCESS,FAILURE",
                                                       "ORCPT=rfc822;a@dest.example"])[0], 250)
            self.assertEqual(s.rcpt("b@dest.example")[0], 250)
            code, text = s.data(body)
            self.assertEqual(code, 250, text)
            self.assertTrue(text.startswith(b"2.0.0"), text)
            qid = self.queued_id(text)
        self.node.stop()
        q = self.node.dump_queue()
        self.assertIn(qid, q)
        m = q[qid]
        self.assertEqual(m["from"], "sender@client.test")
        rcpts = {r["addr"]: r for r in m["rcpts"]}
        self.assertEqual(set(rcpts), {"a@dest.example", "b@dest.example"})
        self.assertEqual(rcpts["a@dest.example"].get("orcpt"), "rfc822;a@dest.example")
        self.assertEqual(rcpts["a@dest.example"].get("notify"), 3)
        self.assertTrue(all(r["state"] == "queued" for r in m["rcpts"]))
        self.assertEqual(m.get("envid"), "abc+2Bdef")

    def test_pipelined_batch(self):
        c = SmtpConn(ADDR, PORT)
        self.assertEqual(c.reply()[0], 220)
        c.send("EHLO pipe.test\r\nMAIL FROM:<p@pipe.test>\r\nRCPT TO:<x@dest.example>\r\n"
               "RCPT TO:<y@dest.example>\r\nDATA\r\n")
        codes = [c.reply()[0] for _ in range(5)]
        self.assertEqual(codes, [250, 250, 250, 250, 354])
        c.send("Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<q@pipe.test>\r\n"
               "RCPT TO:<z@dest.example>\r\nDATA\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        self.assertEqual([c.reply()[0] for _ in range(3)], [250, 250, 354])
        c.send("second\r\n.\r\nQUIT\r\n")
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply()[0], 221)
        self.assertTrue(c.closed())

    def test_bdat_chunks(self):
        c = SmtpConn(ADDR, PORT)
        c.reply()
        c.cmd("EHLO bdat.test")
        self.assertEqual(c.cmd("MAIL FROM:<b@bdat.test> BODY=8BITMIME")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<r@dest.example>")[0], 250)
        part1 = b"Subject: chunks\r\n\r\n\r\n.\r\n"   # CRLF.CRLF inside BDAT ends nothing
        part2 = "8bit: \u00e9\u00e8\r\n".encode("utf-8")
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        self.assertEqual(c.reply()[0], 250)
        c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        # BDAT 0 LAST: an empty body is fine
        c.cmd("MAIL FROM:<b@bdat.test>")
        c.cmd("RCPT TO:<r@dest.example>")
        code, lines = c.cmd("BDAT 0 LAST")
        self.assertEqual(code, 250, lines)
        c.close()

    def test_8bitmime_and_smtputf8(self):
        with self.smtp() as s:
            s.ehlo()
            msg = "Subject: caf\u00e9\r\n\r\nna\u00efve body\r\n".encode("utf-8")
            r = s.sendmail("s\u00e9nder@client.test", ["d\u00e9st@dest.example"], msg,
                           mail_options=["SMTPUTF8", "BODY=8BITMIME"])
            self.assertEqual(r, {})
            # a UTF-8 address without SMTPUTF8 is refused
            code, _ = s.docmd("MAIL FROM:<s\u00e9nder@client.test>")
            self.assertGreaterEqual(code, 500)

    def test_untrusted_client_cannot_relay(self):
        with self.smtp(source=UNTRUSTED) as s:
            s.ehlo()
            self.assertEqual(s.mail("x@outside.test")[0], 250)
            code, text = s.rcpt("victim@elsewhere.test")
            self.assertIn(code, (550, 554))
            self.assertIn(b"5.7.1", text)
            # a relay domain is fine from anyone
            code, text = s.rcpt("user@relay.example")
            self.assertEqual(code, 250, text)
            self.assertEqual(s.rcpt("user@OTHER.example")[0], 250)
            code, text = s.data("Subject: inbound\r\n\r\nhi\r\n")
            self.assertEqual(code, 250)

    def test_size_limit(self):
        with self.smtp() as s:
            s.ehlo()
            code, text = s.mail("a@client.test", ["SIZE=99999999"])
            self.assertEqual(code, 552)
            self.assertIn(b"5.3.4", text)
            s.rset()
            s.mail("a@client.test")
            s.rcpt("b@dest.example")
            code, text = s.data("Subject: big\r\n\r\n" + ("x" * 998 + "\r\n") * 80)
            self.assertEqual(code, 552)
            self.assertEqual(s.noop()[0], 250)   # the session goes on

    def test_too_many_recipients(self):
        with self.smtp() as s:
            s.ehlo()
            s.mail("a@client.test")
            codes = [s.rcpt("r%d@dest.example" % i)[0] for i in range(7)]
            self.assertEqual(codes, [250] * 5 + [452, 452])

    def test_malformed_input_battery(self):
        battery = [
            ("MAIL FROM:<a@b>", 503),              # before EHLO
            ("EHLO bad.test", 250),
            ("RCPT TO:<a@dest.example>", 503),     # before MAIL
            ("DATA", 503),
            ("MAIL FROM:<no-at-sign-or-close", 501),
            ("MAIL FROM:<a@b> FOO=bar", 555),
            ("MAIL FROM:<a@[300.1.1.1]>", 501),
            ("MAIL FROM:<a@b>", 250),
            ("MAIL FROM:<a@b>", 503),              # nested MAIL
            ("RCPT TO:<@@@>", 501),
            ("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", 501),
            ("FROBNICATE", 500),
        ]
        c = SmtpConn(ADDR, PORT)
        c.reply()
        for line, want in battery:
            code, lines = c.cmd(line)
            self.assertEqual(code // 100, want // 100, "%r -> %r" % (line, lines))
            if want != 250:
                self.assertEqual(code, want, "%r -> %r" % (line, lines))
        # a BDAT size that cannot be parsed: the byte stream cannot be resynchronized
        code, lines = c.cmd("BDAT x")
        self.assertEqual(code, 501, lines)
        self.assertTrue(c.closed())
        c.close()
        # overlong line, NUL bytes, too many errors -> 421 and close; node stays up
        c = SmtpConn(ADDR, PORT)
        c.reply()
        c.send(b"EHLO " + b"x" * 5000 + b"\r\n")
        self.assertEqual(c.reply()[0], 500)
        c.send(b"NO\x00OP\r\n")
        self.assertEqual(c.reply()[0], 500)
        codes = []
        try:
            for _ in range(15):
                codes.append(c.cmd("BOGUS")[0])
        except ConnectionError:
            pass
        self.assertIn(421, codes)
        self.assertTrue(c.closed())
        self.assertTrue(self.node.alive())
        with self.smtp() as s:
            self.assertEqual(s.noop()[0], 250)

    def test_smuggling_bare_lf_does_not_end_data(self):
        c = SmtpConn(ADDR, PORT)
        c.reply()
        c.cmd("EHLO smuggle.test")
        c.cmd("MAIL FROM:<a@smuggle.test>")
        c.cmd("RCPT TO:<b@dest.example>")
        self.assertEqual(c.cmd("DATA")[0], 354)
        # "\n.\n" and "\r\n.\n" must not end the data; the MAIL inside is body text
        c.send("Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n.\nRCPT TO:<v@x>\r\n.\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        qid = lines[0].split("queued as ")[1].split()[0]
        self.assertEqual(c.cmd("QUIT")[0], 221)
        c.close()
        self.node.stop()
        q = self.node.dump_queue()
        self.assertEqual(len(q[qid]["rcpts"]), 1)

    def test_swaks_plain_and_pipelined(self):
        for extra in ([], ["--pipeline"]):
            out = subprocess.run(["swaks", "--server", ADDR, "--port", str(PORT), "--helo",
                                  "swaks.test", "--from", "s@swaks.test", "--to",
                                  "t@dest.example", "--body", "swaks body"] + extra,
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            self.assertIn("queued as", out.stdout)

    def test_connection_limits(self):
        n = self.relayd(name="node2", addr="127.0.2.2", port=PORT, max_connections=3,
                        max_connections_per_client=2)
        n.start()
        # the start-up probes' connections (start() may probe several times before relayd
        # logs event=started, and relayd may not have accepted the last ones yet) must all be
        # gone before we count: no server-side socket of the listener left but the listener
        def probes_gone():
            out = subprocess.run(["ss", "-Htn", "state", "established", "state", "close-wait",
                                  "state", "syn-recv", "src", "127.0.2.2:%d" % PORT],
                                 capture_output=True, text=True).stdout
            return out.strip() == ""
        wait_for(probes_gone, 10, "probe connections closed")
        a = SmtpConn("127.0.2.2", PORT, source="127.0.0.1")
        b = SmtpConn("127.0.2.2", PORT, source="127.0.0.1")
        self.assertEqual(a.reply()[0], 220)
        self.assertEqual(b.reply()[0], 220)
        c = SmtpConn("127.0.2.2", PORT, source="127.0.0.1")   # third from one address
        code, lines = c.reply()
        self.assertEqual(code, 421, lines)
        self.assertIn("4.7.0", lines[0])
        self.assertTrue(c.closed())
        d = SmtpConn("127.0.2.2", PORT, source="127.0.0.2")   # another address is fine
        self.assertEqual(d.reply()[0], 220)
        e = SmtpConn("127.0.2.2", PORT, source="127.0.0.3")   # but the total is 3
        self.assertEqual(e.reply()[0], 421)
        a.cmd("QUIT")
        self.assertTrue(a.closed())
        f = SmtpConn("127.0.2.2", PORT, source="127.0.0.1")   # a slot is free again
        self.assertEqual(wait_for(lambda: f.reply()[0], 5, "greeting"), 220)

    def test_queue_ids_unique(self):
        ids = set()
        with self.smtp() as s:
            s.ehlo()
            for i in range(50):
                s.mail("a@client.test")
                s.rcpt("b@dest.example")
                code, text = s.data("Subject: %d\r\n\r\nbody\r\n" % i)
                self.assertEqual(code, 250)
                ids.add(self.queued_id(text))
        self.assertEqual(len(ids), 50)
        self.node.stop()
        self.assertTrue(ids <= set(self.node.dump_queue()))


if __name__ == "__main__":
    unittest.main()
