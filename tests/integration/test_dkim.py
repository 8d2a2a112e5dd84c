"""DKIM signing checked by real verifiers (issue 13 part 3).

relayd signs mail from mynetworks and from AUTH clients whose From: domain has keys; the
messages are relayed to an aiosmtpd destination and what arrived is verified by verifiers we did
not write: Debian's python3-dkim (`dkimverify`) and OpenDKIM's `opendkim-testmsg`, which look the
public keys up in DNS: TXT records served by the test's dnsmasq.  The verifiers use the system
resolver, so each runs in a private mount namespace (`unshare -m`) where /etc/resolv.conf is
bind-mounted to a file naming that dnsmasq; the machine's own resolver is never asked.

Keys: both.example has an RSA-2048 key (selector rsa1) and an Ed25519 one (ed1); rsa.example an
RSA-3072 one; dkim_sign_subdomains = yes (mail.both.example signs as d=both.example).
Address: 127.0.33.x (this module only): relayd .1, dnsmasq .53, destination .25:2525.
"""
import base64
import os
import re
import smtplib
import ssl
import subprocess
import unittest

from dsttest import AioSink, Dnsmasq
from relaytest import RelayTestCase, wait_for
from test_tls_auth import make_cert, make_users

ADDR = "127.0.33.1"
DNS = "127.0.33.53"
DEST = "127.0.33.25"
TRUSTED = "127.0.33.99"
UNTRUSTED = "127.0.33.98"


def gen_key(path, kind):
    if kind == "rsa2048":
        args = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    elif kind == "rsa3072":
        args = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"]
    elif kind == "rsa1024":
        args = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]
    else:
        args = ["genpkey", "-algorithm", "ED25519"]
    subprocess.run(["openssl", *args, "-out", path], check=True, capture_output=True, timeout=60)
    return path


def dns_p(path, kind):
    """The p= of the key's DKIM record, as an operator makes it with openssl (README)."""
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=30).stdout
    if kind == "ed25519":
        der = der[-32:]     # RFC 8463 4.2: the raw public key, not the SubjectPublicKeyInfo
    return base64.b64encode(der).decode()


class DkimTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        k = {}
        k["rsa1"] = gen_key(os.path.join(self.tmp, "both-rsa.pem"), "rsa2048")
        k["ed1"] = gen_key(os.path.join(self.tmp, "both-ed.pem"), "ed25519")
        k["rsa3"] = gen_key(os.path.join(self.tmp, "rsa-3072.pem"), "rsa3072")
        self.keys = k
        txt = [("rsa1._domainkey.both.example", "v=DKIM1; k=rsa; p=" + dns_p(k["rsa1"], "rsa")),
               ("ed1._domainkey.both.example",
                "v=DKIM1; k=ed25519; p=" + dns_p(k["ed1"], "ed25519")),
               ("big._domainkey.rsa.example", "v=DKIM1; k=rsa; p=" + dns_p(k["rsa3"], "rsa"))]
        self.dns = Dnsmasq(self.tmp, DNS, local=("example",), txt=txt,
                           a=[("probe.example", "127.0.33.200")]).start()
        self.opendkim_conf = os.path.join(self.tmp, "opendkim.conf")
        with open(self.opendkim_conf, "w") as f:
            f.write("Mode v\nSyslog no\nNameservers %s\n" % DNS)
        self.resolv = os.path.join(self.tmp, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver %s\noptions timeout:2 attempts:2\n" % DNS)
        self.sink = AioSink(DEST, port=2525).start()
        cert, key = make_cert(self.tmp)
        users = make_users(self.tmp, {"alice": "wonderland"})
        self.node = self.relayd(
            addr=ADDR, port=2525, mynetworks=TRUSTED + "/32", relay_domains="far.example",
            transport="far.example=[%s]:2525" % DEST, tls_cert=cert, tls_key=key,
            auth_users_file=users,
            dkim_keys="both.example:rsa1:%s, both.example:ed1:%s, rsa.example:big:%s" % (
                k["rsa1"], k["ed1"], k["rsa3"]),
            dkim_sign_subdomains="yes")
        self.node.start()

    def tearDown(self):
        self.node.stop()
        self.sink.stop()
        self.dns.stop()
        super().tearDown()

    # ---- the verifiers, run against our dnsmasq ----

    def in_ns(self, argv, data):
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, self.resolv, *argv],
                              input=data, capture_output=True, timeout=60)

    def dkimverify(self, msg, index):
        r = self.in_ns(["dkimverify", "--index", str(index)], msg)
        return r.returncode == 0 and b"signature ok" in r.stdout, r.stdout + r.stderr

    def opendkim(self, msg):
        """OpenDKIM's verifier: opendkim(8) in test mode (-t) with a config of ours: keys from
        our dnsmasq (libunbound forwarding to it, no trust anchor, so nothing else is asked).
        (opendkim-testmsg of Debian 12 answers "dkim_chunk(): Syntax error" to every message,
        even an unsigned three-line one, so the daemon's test mode is the OpenDKIM we use.)
        Returns (every signature verified, output)."""
        path = os.path.join(self.tmp, "opendkim-in.eml")
        with open(path, "wb") as f:
            f.write(msg)
        r = subprocess.run(["opendkim", "-x", self.opendkim_conf, "-t", path],
                           capture_output=True, timeout=60)
        out = (r.stdout + r.stderr).decode()
        results = re.findall(r"verification \(s=(\S+) d=(\S+), (\d+)-bit key[^)]*\) (\w+)", out)
        ok = r.returncode == 0 and results and all(x[3] == "succeeded" for x in results)
        return bool(ok), out

    # ---- sending ----

    def send(self, msg, source=TRUSTED, user=None, mail_opts=()):
        before = self.sink.count()
        with smtplib.SMTP(ADDR, 2525, local_hostname="dkim.test", source_address=(source, 0),
                          timeout=20) as s:
            if user:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s.starttls(context=ctx)
                s.ehlo()
                s.login(user, "wonderland")
            s.sendmail("sender@both.example", ["rcpt@far.example"], msg,
                       mail_options=list(mail_opts))
        wait_for(lambda: self.sink.count() > before, 20, "the message at the destination")
        return self.sink.snapshot()[-1][2]

    @staticmethod
    def sigs(received):
        head = received.split(b"\r\n\r\n", 1)[0]
        return re.findall(rb"^DKIM-Signature:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M)

    def assert_verified(self, received, n):
        sigs = self.sigs(received)
        self.assertEqual(len(sigs), n, received[:600])
        for i in range(n):
            ok, out = self.dkimverify(received, i)
            self.assertTrue(ok, "dkimverify --index %d: %s" % (i, out))
        # opendkim -t reports the first signature: give it each one alone
        fields = re.findall(rb"^DKIM-Signature:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n", received,
                            re.M)
        for i in range(n):
            alone = received
            for k, f in enumerate(fields):
                if k != i:
                    alone = alone.replace(f, b"", 1)
            ok, out = self.opendkim(alone)
            self.assertTrue(ok, "opendkim -t, signature %d: %s" % (i, out))
        return sigs

    def test_both_keys_verified_and_tampering_fails(self):
        msg = (b"From: Sender <sender@both.example>\r\n"
               b"To: rcpt@far.example\r\n"
               b"Subject: both keys\r\n"
               b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
               b"Message-ID: <both@both.example>\r\n"
               b"\r\n"
               b"Hello, signed twice.\r\n")
        got = self.send(msg)
        sigs = self.assert_verified(got, 2)
        tags = [re.sub(rb"\s+", b"", s) for s in sigs]
        self.assertIn(b"a=ed25519-sha256", tags[0])
        self.assertIn(b"a=rsa-sha256", tags[1])
        for t in tags:
            self.assertIn(b"c=relaxed/relaxed", t)
            self.assertIn(b"d=both.example", t)
            # From oversigned: one more than present
            h = re.search(rb";h=([^;]*);", t).group(1).split(b":")  # (blanks removed)
            self.assertEqual(h.count(b"from"), 2, h)
            for name in (b"to", b"subject", b"date", b"message-id"):
                self.assertEqual(h.count(name), 1, h)
        # the verifiers can fail: a changed body, an added From
        bad = got.replace(b"signed twice", b"signed thrice")
        self.assertFalse(self.dkimverify(bad, 0)[0])
        self.assertFalse(self.dkimverify(bad, 1)[0])
        self.assertFalse(self.opendkim(bad)[0])
        self.assertIn("failed", self.opendkim(bad)[1])
        split = got.index(b"\r\n\r\n")
        added = got[:split] + b"\r\nFrom: evil@attacker.example" + got[split:]
        self.assertFalse(self.dkimverify(added, 0)[0])
        self.assertIn("event=dkim-signed d=both.example", self.node.log())

    def test_8bit_long_lines_folded_headers_survive_relaying(self):
        long_line = ("x" * 40 + " \t ") * 23       # ~990 bytes with blanks inside and at the end
        msg = ("From: =?utf-8?q?J=C3=B6rg?= <joerg@mail.both.example>\r\n"
               "To: rcpt@far.example,\r\n"
               "\tsecond@far.example\r\n"
               "Subject: a subject folded\r\n"
               " over three\r\n"
               "\t  lines   with   blanks\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n"
               "\r\n"
               "Grüße aus Köln: äöü ß € 𝄞\r\n"
               + long_line + "\r\n"
               "trailing blanks   \t\r\n"
               "\r\n"
               ".a line starting with a dot\r\n"
               "\r\n\r\n").encode()
        got = self.send(msg, mail_opts=("BODY=8BITMIME",))
        self.assertIn("Grüße aus Köln".encode(), got)
        self.assertIn(long_line.encode(), got)
        sigs = self.assert_verified(got, 2)
        # a From: in a subdomain is signed by the parent's keys
        self.assertIn(b"d=both.example", re.sub(rb"\s+", b"", sigs[0]))

    def test_authenticated_rsa3072_and_who_is_not_signed(self):
        msg = (b"From: alice@rsa.example\r\nTo: rcpt@far.example\r\nSubject: auth\r\n\r\n"
               b"from an authenticated client\r\n")
        got = self.send(msg, source=UNTRUSTED, user="alice")
        sigs = self.assert_verified(got, 1)
        self.assertIn(b"s=big", re.sub(rb"\s+", b"", sigs[0]))
        # a stranger sending to relay_domains is not signed, even with a From: we have keys for
        got = self.send(msg.replace(b"auth", b"stranger"), source=UNTRUSTED)
        self.assertEqual(self.sigs(got), [])
        # a From: domain without a key: not signed
        got = self.send(b"From: x@nokey.example\r\nSubject: n\r\n\r\nno key\r\n")
        self.assertEqual(self.sigs(got), [])
        # no From: at all: queued unsigned, and logged
        got = self.send(b"Subject: nofrom\r\n\r\nno from\r\n")
        self.assertEqual(self.sigs(got), [])
        self.assertIn('event=dkim-unsigned reason="no single From: mailbox', self.node.log())

    def test_key_errors_at_start(self):
        weak = gen_key(os.path.join(self.tmp, "weak.pem"), "rsa1024")
        cases = [
            ("example.com:s:%s" % weak, "dkim_keys: example.com:s:%s: %s: an RSA key of 1024 "
                                        "bits (want 2048 to 8192)" % (weak, weak)),
            ("example.com:s:/nonexistent.pem", "dkim_keys: example.com:s:/nonexistent.pem: "
                                               "/nonexistent.pem: No such file"),
            ("example.com:s", "dkim_keys: 'example.com:s' is not domain:selector:keyfile"),
            ("exa mple.com:s:/k", "is not domain:selector:keyfile"),
            ("example.com:s/x:/k", "'s/x' is not a selector"),
            ("d.example:a:%s, d.example:b:%s" % (self.keys["ed1"], self.keys["ed1"]),
             "d.example has two ed25519 keys"),
        ]
        for value, want in cases:
            r = subprocess.run([os.environ.get("RELAYD", "../../build/node/relayd"),
                                "--data-dir=" + os.path.join(self.tmp, "x"),
                                "--smtp-listen=127.0.33.2:2525", "--dkim-keys=" + value],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, (value, r.stderr))
            self.assertIn(want, r.stderr, value)
        r = subprocess.run([os.environ.get("RELAYD", "../../build/node/relayd"),
                            "--dkim-sign-subdomains=maybe", "--print-config"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("dkim_sign_subdomains: 'maybe' is not yes or no", r.stderr)
        r = subprocess.run([os.environ.get("RELAYD", "../../build/node/relayd"),
                            "--dkim-headers=from,bad:name", "--print-config"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("dkim_headers: 'bad:name' is not a header field name", r.stderr)
        # the log names the record to publish for each key
        log = self.node.log()
        self.assertRegex(log, r"event=dkim-key domain=both.example selector=ed1 type=ed25519 "
                              r"bits=\d+ dns=\"ed1._domainkey.both.example. IN TXT "
                              r"'v=DKIM1; k=ed25519; p=%s'\"" %
                         re.escape(dns_p(self.keys["ed1"], "ed25519")))


if __name__ == "__main__":
    unittest.main()
