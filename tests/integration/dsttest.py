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
            args.append("--txt-record=%s,%s" % (name, text))
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
        """(chain file: leaf then CA, key file, leaf-only file) for cn (and sans, DNS names)."""
        base = os.path.join(self.dir, "%s-%d" % (cn, self.serial))
        key, csr, cert, chain = base + ".key", base + ".csr", base + ".pem", base + "-chain.pem"
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n" % ",".join("DNS:" + n for n in (sans or [cn])))
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
