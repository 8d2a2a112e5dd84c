"""TLS on the SMTP port, checked by tools this project did not write (issue 12 sec. 5): sslscan and
testssl (Debian testssl.sh) find only Mozilla's intermediate profile without DHE (TLS 1.2 with
ECDHE and AEAD ciphers, TLS 1.3), tls_ciphers narrows it, and both ends of a TLS session relayd
closes send a close_notify: the server after QUIT, the delivery client after its QUIT.

Addresses: 127.0.52.x (this module only); the client 127.0.0.99.
"""
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import unittest

from relaytest import RelayTestCase, SmtpConn, wait_for

NET = "127.0.52."
RELAY = NET + "10"
PORT = 2525
DEST = NET + "25"


def make_cert(tmp, cn):
    cert, key = os.path.join(tmp, cn + ".crt"), os.path.join(tmp, cn + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=" + cn],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TlsPipe:
    """A TLS 1.2 session over a plain socket through memory BIOs, keeping every raw byte the
    peer sent: how the peer ends the session shows on the wire as the record type of its last
    records (21 = alert: the close_notify; TLS 1.2 leaves the record type in the clear)."""

    def __init__(self, sock, server_side, cert=None, key=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if server_side:
            ctx.load_cert_chain(cert, key)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.sock, self.inc, self.out = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server_side,
                                server_hostname=None if server_side else "peer.test")
        self.raw = b""        # everything the peer sent after the handshake
        self.handshaken = False
        self.eof = False
        self.buf = b""
        self._run(self.obj.do_handshake)
        self.handshaken = True

    def _pump(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _feed(self):
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            self.inc.write_eof()
        elif self.handshaken:
            self.raw += data
        self.inc.write(data) if data else None

    def _run(self, op):
        while True:
            try:
                r = op()
                self._pump()
                return r
            except ssl.SSLWantReadError:
                self._pump()
                if self.eof:
                    raise ConnectionError("EOF")
                self._feed()

    def send(self, data):
        self._run(lambda: self.obj.write(data))

    def readline(self):
        """A line, or b"" once the peer ended the session (cleanly or not)."""
        while b"\n" not in self.buf:
            try:
                chunk = self._run(lambda: self.obj.read(65536))
            except (ssl.SSLError, ConnectionError):
                chunk = b""
            if not chunk:
                return b""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def drain(self):
        """Reads raw bytes until the peer closes the TCP connection."""
        while not self.eof:
            self._feed()

    def record_types(self):
        types, i = [], 0
        while i + 5 <= len(self.raw):
            types.append(self.raw[i])
            i += 5 + int.from_bytes(self.raw[i + 3:i + 5], "big")
        return types


def sslscan(addr):
    r = subprocess.run(["sslscan", "--no-colour", "--starttls-smtp", addr], capture_output=True,
                       text=True, timeout=120)
    return r.stdout


class TlsDest:
    """An SMTP destination offering STARTTLS (TLS 1.2) that records, per TLS session, how the
    client ended it: "close_notify" when its last record was an alert, else "no close_notify"."""

    def __init__(self, addr, port, cert, key):
        self.cert, self.key = cert, key
        self.ends = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(20)
        c.sendall(b"220 dest.test ESMTP\r\n")
        line = b""
        while True:
            b = c.recv(1)
            if not b:
                return
            line += b
            if not line.endswith(b"\n"):
                continue
            if line.upper().startswith(b"EHLO"):
                c.sendall(b"250-dest.test\r\n250 STARTTLS\r\n")
            elif line.upper().startswith(b"STARTTLS"):
                c.sendall(b"220 go ahead\r\n")
                break
            else:
                c.sendall(b"500 no\r\n")
            line = b""
        t = TlsPipe(c, True, self.cert, self.key)
        while True:
            line = t.readline()
            if not line:
                break
            cmd = line.upper()
            if cmd.startswith(b"EHLO"):
                t.send(b"250 dest.test\r\n")
            elif cmd.startswith(b"DATA"):
                t.send(b"354 go\r\n")
                while t.readline() not in (b".\r\n", b""):
                    pass
                t.send(b"250 2.0.0 kept\r\n")
            elif cmd.startswith(b"QUIT"):
                t.send(b"221 bye\r\n")
                t.drain()
                break
            else:
                t.send(b"250 ok\r\n")
        types = t.record_types()
        self.ends.append("close_notify" if types and types[-1] == 21 else
                         "no close_notify (records %s)" % types[-3:])

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


class TlsProfileTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.cert, self.key = make_cert(self.tmp, "node1.relay.test")

    def start(self, **keys):
        n = self.relayd(addr=RELAY, port=PORT, mynetworks="127.0.0.0/8", tls_cert=self.cert,
                        tls_key=self.key, **keys)
        n.start()
        return n

    def test_sslscan_and_testssl_see_the_intermediate_profile(self):
        self.start()
        out = sslscan("%s:%d" % (RELAY, PORT))
        for old in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
            self.assertRegex(out, r"(?m)^%s\s+disabled" % re.escape(old))
        self.assertRegex(out, r"(?m)^TLSv1\.3\s+enabled")
        tls12 = re.findall(r"(?m)^(?:Accepted|Preferred)\s+TLSv1\.2\s+\d+ bits\s+(\S+)", out)
        tls13 = re.findall(r"(?m)^(?:Accepted|Preferred)\s+TLSv1\.3\s+\d+ bits\s+(\S+)", out)
        print("sslscan: TLS 1.2 %s; TLS 1.3 %s" % (tls12, tls13))
        self.assertTrue(tls12 and tls13, out)
        for c in tls12:  # ECDHE key exchange and AEAD only: no static RSA, no CBC, no DHE
            self.assertRegex(c, r"^ECDHE-(RSA|ECDSA)-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$", out)
        # testssl's cipher categories (about two minutes: it opens one connection per probe)
        r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off",
                            "--starttls", "smtp", "--std", "%s:%d" % (RELAY, PORT)],
                           capture_output=True, text=True, timeout=400)
        out = r.stdout
        print(out[out.find("Testing cipher categories"):].strip())
        for cat in ("NULL ciphers", "Anonymous NULL Ciphers", "Export ciphers", "LOW: 64 Bit",
                    "Triple DES Ciphers", "Obsolete CBC ciphers"):
            self.assertRegex(out, r"(?m)^\s*%s.*\s not offered" % re.escape(cat), out)
        self.assertRegex(out, r"(?m)^\s*Strong encryption \(AEAD ciphers\)\s+offered")

    def test_tls_ciphers_is_configurable(self):
        self.start(tls_ciphers="ECDHE-RSA-AES256-GCM-SHA384")
        out = sslscan("%s:%d" % (RELAY, PORT))
        tls12 = re.findall(r"(?m)^(?:Accepted|Preferred)\s+TLSv1\.2\s+\d+ bits\s+(\S+)", out)
        self.assertEqual(tls12, ["ECDHE-RSA-AES256-GCM-SHA384"], out)

    def test_server_sends_close_notify_after_quit(self):
        self.start()
        c = SmtpConn(RELAY, PORT, source="127.0.0.99")
        c.reply()
        c.cmd("EHLO tls.example")
        self.assertEqual(c.cmd("STARTTLS")[0], 220)
        t = TlsPipe(c.sock, False)
        t.send(b"EHLO tls.example\r\n")
        while not t.readline().startswith(b"250 "):
            pass
        t.send(b"QUIT\r\n")
        self.assertTrue(t.readline().startswith(b"221"))
        t.drain()
        types = t.record_types()
        self.assertEqual(types[-1], 21, "the last record before the TCP close: %s" % types)
        c.close()

    def test_delivery_client_sends_close_notify(self):
        dcert, dkey = make_cert(self.tmp, "dest.test")
        dest = TlsDest(DEST, 25, dcert, dkey)
        self.addCleanup(dest.stop)
        self.start(transport="dst.test=%s:25" % DEST, tls_required_domains="dst.test")
        c = SmtpConn(RELAY, PORT)
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@client.example>")
        self.assertEqual(c.cmd("RCPT TO:<x@dst.test>")[0], 250)
        c.cmd("DATA")
        self.assertEqual(c.cmd("Subject: t\r\n\r\nover TLS\r\n.")[0], 250)
        c.cmd("QUIT")
        c.close()
        wait_for(lambda: dest.ends, 30, "the delivery's TLS session to end")
        self.assertEqual(dest.ends[0], "close_notify")


if __name__ == "__main__":
    unittest.main()
