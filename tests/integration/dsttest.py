"""dsttest: the far side of delivery for integration tests - a dnsmasq, SMTP destinations.

Everything listens on loopback addresses the test module owns (127.0.N.x); destinations on port
25 of their own address, as an MX would.  Nothing here uses /etc/resolv.conf: dnsmasq runs with
--no-resolv and answers only what the test tells it (and NXDOMAIN for the rest of its zones).

  Dnsmasq(addr, mx=[(domain, host, pref)], a=[(host, addr)], null_mx=[domain], local=[zone],
          txt=[(name, text)])
  AioSink(addr)       aiosmtpd in a thread: keeps every envelope and the exact bytes received
  SmtpSink(addr, ...) Postfix smtp-sink (-d dump files, -r/-s/-Q to fail chosen commands)
  dns_query(server, name, qtype) -> (rcode, answer count), a minimal UDP client for readiness
"""
import os
import random
import socket
import struct
import subprocess
import threading
import time

from relaytest import _procs, wait_for, port_open

DNSMASQ = "/usr/sbin/dnsmasq"
SMTP_SINK = "/usr/sbin/smtp-sink"


def dns_query(server, name, qtype=1, port=53, timeout=0.5):
    """Sends one query; returns (rcode, ancount) or None on timeout."""
    qid = random.randint(0, 65535)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, (server, port))
            data, _ = s.recvfrom(4096)
        except OSError:
            return None
    rid, flags, _qd, an, _ns, _ar = struct.unpack(">HHHHHH", data[:12])
    if rid != qid:
        return None
    return flags & 0xF, an


class Dnsmasq:
    """dnsmasq on addr:53 serving only the given records; other names in `local` zones are
    NXDOMAIN.  Null MX (RFC 7505) is a raw MX record: preference 0, exchange "."."""

    def __init__(self, workdir, addr, mx=(), a=(), null_mx=(), local=("test",), txt=()):
        self.addr = addr
        self.log_path = os.path.join(workdir, "dnsmasq-%s.log" % addr)
        args = [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                "--listen-address=%s" % addr, "--port=53", "--bind-interfaces",
                "--log-queries", "--log-facility=-", "--user=root", "--group=root",
                "--pid-file=", "--cache-size=0", "--local-ttl=1"]
        for z in local:
            args.append("--local=/%s/" % z)
        for domain, host, pref in mx:
            args.append("--mx-host=%s,%s,%d" % (domain, host, pref))
        for host, ip in a:
            args.append("--host-record=%s,%s" % (host, ip))
        for domain in null_mx:
            args.append("--dns-rr=%s,15,000000" % domain)
        for name, text in txt:
            # one TXT record; a text over 255 bytes becomes several strings (RFC 1035 3.3.14).
            # On dnsmasq's command line a comma separates strings and quotes stay literal,
            # so the text must not contain a comma.
            assert "," not in text, text
            parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
            args.append("--txt-record=%s,%s" % (name, ",".join(parts)))
        self.args = args
        self.proc = None
        self.probe = a[0][0] if a else None

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        _procs.append(self.proc)
        name = self.probe or "probe.test"
        wait_for(lambda: self.proc.poll() is not None or dns_query(self.addr, name) is not None,
                 10, "dnsmasq on %s" % self.addr)
        if self.proc.poll() is not None:
            raise AssertionError("dnsmasq exited: %s" % open(self.log_path).read())
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class AioSink:
    """An aiosmtpd destination in this process: keeps (mail_from, rcpt_tos, bytes) of every
    message, the bytes exactly as received after dot-unstuffing (CRLF line ends)."""

    def __init__(self, addr, port=25, reply="250 2.0.0 Ok: kept", tls_context=None):
        from aiosmtpd.controller import Controller

        self.addr, self.port = addr, port
        self.messages = []
        self.tls = []          # per message: was the session under STARTTLS?
        self.times = []        # per message: time.monotonic() at the end of DATA
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with sink.lock:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content))
                    sink.tls.append(session.ssl is not None)
                    sink.times.append(time.monotonic())
                return reply

        kw = {}
        if tls_context is not None:
            kw = {"tls_context": tls_context, "require_starttls": True}
        self.controller = Controller(Handler(), hostname=addr, port=port, decode_data=False,
                                     data_size_limit=64 << 20, enable_SMTPUTF8=True,
                                     ready_timeout=10, **kw)

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        try:
            self.controller.stop()
        except Exception:
            pass

    def count(self):
        with self.lock:
            return len(self.messages)

    def snapshot(self):
        with self.lock:
            return list(self.messages)


class SmtpSink:
    """Postfix smtp-sink on addr:port.  dump=True writes one file per transaction (envelope as
    X-Mail-Args/X-Rcpt-Args headers, then the message).  extra: flags such as
    ["-B", "550 5.1.1 no such user", "-s", "RCPT"] (hard-reject RCPT) or ["-r", "RCPT"]."""

    def __init__(self, workdir, addr, port=25, dump=True, extra=()):
        self.addr, self.port = addr, port
        self.dir = os.path.join(workdir, "sink-%s-%d" % (addr, port))
        os.makedirs(self.dir, exist_ok=True)
        args = [SMTP_SINK, "-u", "root", "-c"]
        if dump:
            args += ["-d", self.dir + "/%H%M%S."]
        args += list(extra) + ["%s:%d" % (addr, port), "100"]
        self.args = args
        self.proc = None

    def start(self):
        self.out = open(os.path.join(self.dir, "..", "sink-%s.out" % self.addr), "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        _procs.append(self.proc)
        wait_for(lambda: self.proc.poll() is not None or port_open(self.addr, self.port), 10,
                 "smtp-sink on %s:%d" % (self.addr, self.port))
        if self.proc.poll() is not None:
            raise AssertionError("smtp-sink exited %d" % self.proc.returncode)
        return self

    def files(self):
        return sorted(os.path.join(self.dir, f) for f in os.listdir(self.dir))

    def messages(self):
        out = []
        for f in self.files():
            with open(f, "rb") as fh:
                out.append(fh.read())
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def tls_context(workdir, cn="mx.test"):
    """A server-side ssl.SSLContext with a fresh self-signed certificate (openssl req)."""
    import ssl
    cert, key = os.path.join(workdir, "dst-cert.pem"), os.path.join(workdir, "dst-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=%s" % cn, "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def queue_empty(node):
    """True when relayd --dump-queue shows no message.  A read-only open racing with the
    running node's compaction can fail ("No such file"): that counts as "not yet"."""
    try:
        return node.dump_queue() == {}
    except AssertionError:
        return False
