"""Who may send as whom: sender_permissions_file (issue 13 part 1) and its reload on SIGHUP,
with auth_users_file, without dropping sessions.

Real clients (Python's smtplib over STARTTLS with AUTH PLAIN) against a real relayd.
Address: 127.0.31.x (this module only).
"""
import os
import signal
import smtplib
import subprocess
import ssl
import unittest

from relaytest import RELAYD, RelayTestCase, wait_for
from test_tls_auth import make_cert, make_users

ADDR = "127.0.31.1"
PORT = 2525
UNTRUSTED = "127.0.31.98"   # outside mynetworks
TRUSTED = "127.0.31.99"     # in mynetworks

PERMS = """# user: patterns
alice: alice@example.com, @sales.example.com
relay: *
bob: bob@example.com
"""


class SendersTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        cert, key = make_cert(self.tmp)
        self.users_pw = {"alice": "wonderland", "bob": "b0b", "relay": "r3lay", "carol": "c4rol"}
        self.users = make_users(self.tmp, self.users_pw)
        self.perms = os.path.join(self.tmp, "senders")
        with open(self.perms, "w") as f:
            f.write(PERMS)
        self.node = self.relayd(addr=ADDR, port=PORT, mynetworks="127.0.31.99/32",
                                tls_cert=cert, tls_key=key, auth_users_file=self.users,
                                sender_permissions_file=self.perms)
        self.node.start()
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def login(self, user, password=None, source=UNTRUSTED):
        s = smtplib.SMTP(ADDR, PORT, local_hostname="senders.test", source_address=(source, 0),
                         timeout=15)
        s.starttls(context=self.ctx)
        s.ehlo()
        if user is not None:
            s.user, s.password = user, password or self.users_pw[user]
            code, text = s.auth("PLAIN", s.auth_plain)
            self.assertEqual(code, 235, text)
        return s

    def mail(self, s, sender):
        code, text = s.docmd("MAIL", "FROM:<%s>" % sender)
        if code == 250:
            s.rset()
        return code, text.decode()

    def test_patterns(self):
        with self.login("alice") as s:
            self.assertEqual(self.mail(s, "alice@example.com")[0], 250)
            self.assertEqual(self.mail(s, "Alice@Example.COM")[0], 250)
            self.assertEqual(self.mail(s, "anyone@sales.example.com")[0], 250)
            self.assertEqual(self.mail(s, "bob@example.com"),
                             (553, "5.7.1 <bob@example.com>: Sender address rejected: "
                                   "not owned by user alice"))
            self.assertEqual(self.mail(s, "x@eu.sales.example.com")[0], 553)
            # <> only for users with *
            self.assertEqual(self.mail(s, ""),
                             (553, "5.7.1 <>: Sender address rejected: not owned by user alice"))
            # the whole message path: accepted as herself, refused as bob
            self.assertEqual(s.sendmail("alice@example.com", ["x@far.example"],
                                        b"Subject: ok\r\n\r\nhi\r\n"), {})
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("bob@example.com", ["x@far.example"], b"Subject: no\r\n\r\nhi\r\n")
            self.assertEqual(cm.exception.smtp_code, 553)
        with self.login("relay") as s:
            self.assertEqual(self.mail(s, "")[0], 250)
            self.assertEqual(self.mail(s, "whoever@anywhere.example")[0], 250)
        # a user with a password but not in the file may send as nobody
        with self.login("carol") as s:
            self.assertEqual(self.mail(s, "carol@example.com"),
                             (553, "5.7.1 <carol@example.com>: Sender address rejected: "
                                   "not owned by user carol"))
        # mynetworks is not checked, nor an unauthenticated client (it may only send to
        # relay_domains, which is not this part's business)
        with self.login(None, source=TRUSTED) as s:
            self.assertEqual(self.mail(s, "bob@example.com")[0], 250)
            self.assertEqual(self.mail(s, "")[0], 250)
        with self.login(None) as s:
            self.assertEqual(self.mail(s, "bob@example.com")[0], 250)
        log = self.node.log()
        self.assertIn("event=reject cmd=MAIL code=553 enh=5.7.1 client=%s user=alice "
                      "from=<bob@example.com>" % UNTRUSTED, log)

    def hup_and_wait(self, event):
        before = self.node.log().count(event)
        self.node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.node.log().count(event) > before, 10, event)

    def test_reload_on_sighup_keeps_sessions(self):
        s = self.login("alice")
        self.assertEqual(self.mail(s, "alice@new.example")[0], 553)
        with open(self.perms, "w") as f:
            f.write(PERMS + "alice: alice@new.example\ndave: @dave.example\n")
        self.users_pw["dave"] = "d4ve"
        make_users(self.tmp, self.users_pw)
        self.hup_and_wait("event=reload auth_users=5 sender_users=4 sender_patterns=6")
        # the session opened before the reload goes on, under the new permissions
        self.assertEqual(self.mail(s, "alice@new.example")[0], 250)
        self.assertEqual(s.sendmail("alice@new.example", ["x@far.example"],
                                    b"Subject: after reload\r\n\r\nhi\r\n"), {})
        # a user added to auth_users_file logs in
        with self.login("dave") as d:
            self.assertEqual(self.mail(d, "me@dave.example")[0], 250)
        # a bad file keeps both old tables and says why
        with open(self.perms, "w") as f:
            f.write("alice: alice@example.com\nbroken line\n")
        self.hup_and_wait("event=reload-failed")
        self.assertIn('event=reload-failed error="sender_permissions_file: %s:2: expected '
                      '\'user: pattern, ...\'' % self.perms, self.node.log())
        self.assertEqual(self.mail(s, "alice@new.example")[0], 250)
        with self.login("dave") as d:
            self.assertEqual(self.mail(d, "me@dave.example")[0], 250)
        # a missing users file: the same
        os.rename(self.users, self.users + ".gone")
        self.hup_and_wait("event=reload-failed")
        self.assertIn("auth_users_file: %s: No such file" % self.users, self.node.log())
        with self.login("dave") as d:
            self.assertEqual(self.mail(d, "me@dave.example")[0], 250)
        self.assertEqual(self.mail(s, "alice@new.example")[0], 250)
        s.quit()
        self.assertTrue(self.node.alive())

    def test_bad_file_at_start_is_a_config_error(self):
        bad = os.path.join(self.tmp, "bad")
        with open(bad, "w") as f:
            f.write("alice: not-an-address\n")
        n = self.relayd(name="node2", addr="127.0.31.2", port=PORT, sender_permissions_file=bad,
                        tls_cert=self.node.keys["tls_cert"], tls_key=self.node.keys["tls_key"],
                        auth_users_file=self.users)
        n.write_config()
        out = subprocess.run([RELAYD, "--config", n.conf_path], capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"sender_permissions_file: %s:1: bad pattern 'not-an-address'" %
                      bad.encode(), out.stderr)
        # without auth_users_file it is meaningless: refused
        out = subprocess.run([RELAYD, "--data-dir=" + self.tmp + "/x",
                              "--smtp-listen=127.0.31.3:2525",
                              "--sender-permissions-file=" + self.perms],
                             capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"sender_permissions_file: needs auth_users_file", out.stderr)


if __name__ == "__main__":
    unittest.main()
