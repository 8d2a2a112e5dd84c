"""STARTTLS and AUTH PLAIN/LOGIN against relayd with a certificate the test makes with openssl.

Address: 127.0.3.x (this module only).
"""
import base64
import os
import smtplib
import ssl
import subprocess
import unittest

from relaytest import RelayTestCase, SmtpConn

ADDR = "127.0.3.1"
PORT = 2525
UNTRUSTED = "127.0.0.98"


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=node1.relay.test"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def make_users(tmp, users):
    path = os.path.join(tmp, "users")
    with open(path, "w") as f:
        f.write("# user:hash, made with openssl passwd -6\n")
        for user, pw in users.items():
            h = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=pw, text=True,
                               check=True, capture_output=True).stdout.strip()
            f.write("%s:%s\n" % (user, h))
    return path


class TlsAuthTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        cert, key = make_cert(self.tmp)
        users = make_users(self.tmp, {"alice": "wonderland", "bob@example.org": "b0b pass"})
        self.node = self.relayd(addr=ADDR, port=PORT, mynetworks="127.0.0.1/32, 127.0.3.0/24",
                                tls_cert=cert, tls_key=key, auth_users_file=users)
        self.node.start()
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def client(self, source=UNTRUSTED):
        return smtplib.SMTP(ADDR, PORT, local_hostname="tls.test", source_address=(source, 0),
                            timeout=15)

    def test_auth_only_after_starttls(self):
        with self.client() as s:
            code, msg = s.ehlo()
            self.assertIn(b"STARTTLS", msg)
            self.assertNotIn(b"AUTH", msg)
            code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wonderland").decode())
            self.assertEqual(code, 530)
            s.starttls(context=self.ctx)
            code, msg = s.ehlo()
            self.assertNotIn(b"STARTTLS", msg)
            self.assertIn(b"AUTH PLAIN LOGIN", msg)

    def test_auth_plain_relays(self):
        with self.client() as s:
            s.starttls(context=self.ctx)
            s.ehlo()
            # before AUTH an untrusted client may not relay
            s.mail("alice@client.test")
            self.assertEqual(s.rcpt("x@far.example")[0], 554)
            s.rset()
            s.user, s.password = "alice", "wonderland"
            code, text = s.auth("PLAIN", s.auth_plain)
            self.assertEqual(code, 235, text)
            r = s.sendmail("alice@client.test", ["x@far.example"], b"Subject: tls\r\n\r\nhi\r\n")
            self.assertEqual(r, {})

    def test_auth_login_and_failure(self):
        with self.client() as s:
            s.starttls(context=self.ctx)
            s.ehlo()
            s.user, s.password = "bob@example.org", "wrong"
            with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
                s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            self.assertEqual(cm.exception.smtp_code, 535)
            s.user, s.password = "bob@example.org", "b0b pass"
            code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            self.assertEqual(code, 235)
            self.assertEqual(s.docmd("AUTH", "PLAIN")[0], 503)   # not twice

    def test_pipelined_input_after_starttls_is_discarded(self):
        c = SmtpConn(ADDR, PORT, source=UNTRUSTED)
        c.reply()
        c.cmd("EHLO inject.test")
        # CVE-2011-0411: commands sent in the clear after STARTTLS must not be executed
        c.send("STARTTLS\r\nMAIL FROM:<evil@inject.test>\r\n")
        code, _ = c.reply()
        self.assertEqual(code, 220)
        tls = self.ctx.wrap_socket(c.sock, server_hostname="node1.relay.test")
        tls.sendall(b"MAIL FROM:<a@b.test>\r\n")
        data = tls.recv(4096)
        self.assertTrue(data.startswith(b"503"), data)   # no EHLO after TLS: state was reset
        tls.close()

    def test_timeouts_command_and_stalled_handshake(self):
        cert, key = make_cert(self.tmp)
        n = self.relayd(name="node2", addr="127.0.3.2", port=PORT, tls_cert=cert, tls_key=key,
                        command_timeout="1s")
        n.start()
        idle = SmtpConn("127.0.3.2", PORT)
        idle.reply()
        code, lines = idle.reply()        # nothing sent: the command timer fires
        self.assertEqual(code, 421, lines)
        self.assertIn("4.4.2", lines[0])
        self.assertTrue(idle.closed())
        stall = SmtpConn("127.0.3.2", PORT)
        stall.reply()
        stall.cmd("EHLO stall.test")
        self.assertEqual(stall.cmd("STARTTLS")[0], 220)
        self.assertTrue(stall.closed(timeout=10))   # no ClientHello ever: cut after the timeout
        self.assertTrue(n.alive())

    def test_swaks_tls_auth(self):
        out = subprocess.run(["swaks", "--server", ADDR, "--port", str(PORT), "--tls",
                              "--auth", "PLAIN", "--auth-user", "alice", "--auth-password",
                              "wonderland", "--from", "alice@client.test", "--to",
                              "z@far.example", "--local-interface", UNTRUSTED],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("queued as", out.stdout)
        self.assertNotIn("wonderland", self.node.log())   # no secrets in logs


if __name__ == "__main__":
    unittest.main()
