"""dsttest: the far side of delivery for integration tests - a dnsmasq, SMTP destinations.

Everything listens on loopback addresses the test module owns (127.0.N.x); destinations on port
25 of their own address, as an MX would.  Nothing here uses /etc/resolv.conf: dnsmasq runs with
--no-resolv and answers only what the test tells it (and NXDOMAIN for the rest of its zones).

  Dnsmasq(addr, mx=[(domain, host, pref)], a=[(host, addr)], null_mx=[domain], local=[zone],
          txt=[(name, text)])
  AioSink(addr)       aiosmtpd in a thread: keeps every envelope and the exact bytes received
  SmtpSink(addr, ...) Postfix smtp-sink (-d dump files, -r/-s/-Q to fail chosen commands)
  dns_query(server, name, qtype) -> (rcode, answer count), a minimal UDP client for readiness
  TestCA(workdir, name)  a CA made with openssl: issue(cn, sans) -> (chain, key, cert) files
  HttpsServer(addr, chain, key, routes={host: (status, content_type, body)})  an HTTPS server
                      (Python's http.server over ssl) that answers by Host header and counts
  tlsa(cert, usage, selector, mtype) -> "3 1 1 <hex>", the TLSA record data for a certificate
  SignedZone(workdir, origin, text)  a zone signed with ldns-signzone (its key: the anchor)
  Nsd(workdir, addr, zones)          NSD, authoritative for the zone files, on addr:53
  Unbound(workdir, addr, stubs, anchors)  a validating resolver: each stub zone from its
                      server, trust anchored at the given keys (everything else is insecure)
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


class TestCA:
    """A certificate authority for tests (openssl CLI): a self-signed root, and leaf certificates
    it signs with subjectAltName DNS names.  Two TestCAs are two strangers to each other."""

    def __init__(self, workdir, name):
        self.dir = os.path.join(workdir, "ca-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.cert = os.path.join(self.dir, "ca.pem")
        self.key = os.path.join(self.dir, "ca.key")
        self.serial = 1
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "3", "-subj",
                        "/CN=%s" % name, "-keyout", self.key, "-out", self.cert,
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                       check=True, capture_output=True)

    def issue(self, cn, sans=None):
        """(chain file: leaf then CA, key file, leaf-only file) for cn (and sans: DNS names, or
        "IP:addr")."""
        base = os.path.join(self.dir, "%s-%d" % (cn, self.serial))
        key, csr, cert, chain = base + ".key", base + ".csr", base + ".pem", base + "-chain.pem"
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n" % ",".join(
                n if n.startswith("IP:") else "DNS:" + n for n in (sans or [cn])))
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=%s" % cn,
                        "-keyout", key, "-out", csr], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey",
                        self.key, "-set_serial", str(self.serial), "-days", "2", "-out", cert,
                        "-extfile", ext], check=True, capture_output=True)
        self.serial += 1
        with open(chain, "w") as out, open(cert) as leaf, open(self.cert) as root:
            out.write(leaf.read() + root.read())
        return chain, key, cert


def server_tls_context(chain, key):
    """A server-side ssl.SSLContext presenting chain (leaf first) with key."""
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(chain, key)
    return ctx


class HttpsServer:
    """An HTTPS server (http.server + ssl, in a thread) on addr:port.  routes maps a Host header
    (without port) to (status, content_type, body); other hosts get 404.  hits counts requests
    per (host, path)."""

    def __init__(self, addr, chain, key, routes, port=443):
        import http.server
        import ssl
        self.addr, self.port = addr, port
        self.routes = dict(routes)
        self.hits = {}
        self.lock = threading.Lock()
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                with srv.lock:
                    srv.hits[(host, self.path)] = srv.hits.get((host, self.path), 0) + 1
                    status, ctype, body = srv.routes.get(host, (404, "text/plain", "no\n"))
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(chain, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        wait_for(lambda: port_open(self.addr, self.port), 10, "https on %s" % self.addr)
        return self

    def count(self, host, path="/.well-known/mta-sts.txt"):
        with self.lock:
            return self.hits.get((host, path), 0)

    def set_route(self, host, status, ctype, body):
        with self.lock:
            self.routes[host] = (status, ctype, body)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"


def _der(cert, spki=False):
    """The DER of a PEM certificate, or of its SubjectPublicKeyInfo."""
    if not spki:
        return subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"],
                              check=True, capture_output=True).stdout
    pub = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"],
                         check=True, capture_output=True).stdout
    return subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                          check=True, capture_output=True).stdout


def tlsa(cert, usage, selector, mtype):
    """TLSA record data (RFC 6698 2.2 presentation) for a PEM certificate."""
    import hashlib
    data = _der(cert, spki=selector == 1)
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return "%d %d %d %s" % (usage, selector, mtype, data.hex())


class SignedZone:
    """A zone file for origin (text: records relative to it, after $ORIGIN/$TTL/SOA/NS lines this
    class writes), signed with a fresh ECDSA P-256 key by ldns-signzone unless sign=False.
    path is the file to serve; anchor the key file (a DNSKEY record) for a trust anchor."""

    def __init__(self, workdir, origin, text, ns_addr, sign=True, ttl=60):
        self.dir = os.path.join(workdir, "zone-" + origin)
        os.makedirs(self.dir, exist_ok=True)
        self.origin = origin
        src = os.path.join(self.dir, origin + ".zone")
        with open(src, "w") as f:
            f.write("$ORIGIN %s.\n$TTL %d\n" % (origin, ttl))
            f.write("@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 %d\n" % (origin, origin, ttl))
            f.write("@ IN NS ns.%s.\nns IN A %s\n" % (origin, ns_addr))
            f.write(text)
        self.path, self.anchor = src, None
        if sign:
            key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin],
                                 cwd=self.dir, check=True, capture_output=True,
                                 text=True).stdout.strip()
            subprocess.run(["ldns-signzone", src, key], cwd=self.dir, check=True,
                           capture_output=True)
            self.path = src + ".signed"
            self.anchor = os.path.join(self.dir, key + ".key")

    def corrupt(self, owner, rtype, old, new):
        """Changes the data of a signed record after signing: its RRSIG no longer matches
        (a validating resolver calls the answer bogus and says SERVFAIL)."""
        with open(self.path) as f:
            lines = f.read().splitlines()
        n = 0
        for i, l in enumerate(lines):
            parts = l.split("\t")
            if parts[0] == owner + "." and len(parts) > 4 and parts[3] == rtype and old in l:
                lines[i] = l.replace(old, new)
                n += 1
        assert n == 1, "corrupt: %d records matched" % n
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")


class Nsd:
    """NSD on addr:53 serving zones [(origin, zone file)] (no daemon, no chroot, no user)."""

    def __init__(self, workdir, addr, zones):
        self.addr = addr
        self.dir = os.path.join(workdir, "nsd-" + addr)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "nsd.conf")
        self.log_path = os.path.join(self.dir, "nsd.log")
        with open(self.conf, "w") as f:
            f.write("server:\n  ip-address: %s\n  port: 53\n  do-ip6: no\n" % addr)
            f.write('  username: ""\n  chroot: ""\n  database: ""\n  server-count: 1\n')
            for k in ("pidfile", "xfrdfile", "zonelistfile"):
                f.write('  %s: "%s"\n' % (k, os.path.join(self.dir, k)))
            f.write('  xfrdir: "%s"\n  zonesdir: "%s"\n  verbosity: 1\n' % (self.dir, self.dir))
            f.write("remote-control:\n  control-enable: no\n")
            for origin, path in zones:
                f.write('zone:\n  name: "%s"\n  zonefile: "%s"\n' % (origin, path))
        self.probe = "ns." + zones[0][0]
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([NSD, "-d", "-c", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _procs.append(self.proc)
        wait_for(lambda: self.proc.poll() is not None or dns_query(self.addr, self.probe),
                 15, "nsd on %s" % self.addr)
        if self.proc.poll() is not None:
            raise AssertionError("nsd exited: %s" % open(self.log_path).read())
        return self

    def stop(self):
        _stop(self.proc)
        self.logf.close()


class Unbound:
    """A validating unbound on addr:53: stub zones [(zone, server addr)] (the test's own
    authoritative servers), trust anchors = key files of SignedZone; the test TLD is taken out
    of unbound's built-in local zones; names under no anchor are insecure."""

    def __init__(self, workdir, addr, stubs, anchors, probe):
        self.addr = addr
        self.dir = os.path.join(workdir, "unbound-" + addr)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "unbound.conf")
        self.log_path = os.path.join(self.dir, "unbound.log")
        with open(self.conf, "w") as f:
            f.write("server:\n  interface: %s\n  port: 53\n  do-ip6: no\n" % addr)
            f.write('  username: ""\n  chroot: ""\n  directory: "%s"\n' % self.dir)
            f.write('  pidfile: "%s"\n  use-syslog: no\n  logfile: ""\n' %
                    os.path.join(self.dir, "unbound.pid"))
            f.write("  verbosity: 1\n  val-log-level: 2\n  num-threads: 1\n")
            f.write("  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n")
            f.write('  module-config: "validator iterator"\n  local-zone: "test." nodefault\n')
            f.write("  cache-max-ttl: 5\n  cache-max-negative-ttl: 5\n")
            for a in anchors:
                f.write('  trust-anchor-file: "%s"\n' % a)
            f.write("remote-control:\n  control-enable: no\n")
            for zone, server in stubs:
                f.write('stub-zone:\n  name: "%s"\n  stub-addr: %s\n' % (zone, server))
        self.probe = probe
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _procs.append(self.proc)
        wait_for(lambda: self.proc.poll() is not None or dns_query(self.addr, self.probe),
                 15, "unbound on %s" % self.addr)
        if self.proc.poll() is not None:
            raise AssertionError("unbound exited: %s" % open(self.log_path).read())
        return self

    def stop(self):
        _stop(self.proc)
        self.logf.close()


def _stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class HangServer:
    """A TCP server on addr:port that accepts connections and never says anything (a stuck
    peer).  accepted counts them."""

    def __init__(self, addr, port):
        self.addr, self.port = addr, port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.conns = []
        self.accepted = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            self.accepted += 1

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()
