"""The abuse battery (issue 12): what a stranger on port 25 tries, from a stranger's address
(127.0.0.99, 127.0.0.1xx), each attack asserting the reply, the counter on /metrics and the
event=reject log line, and that legitimate mail sent during the attack (from mynetworks,
127.0.51.1) is delivered.

  backscatter   <postmaster> without postmaster_address (550 5.1.1), with it (routed); a quoted
                local part with a space (accepted and delivered as sent: one grammar); a DSN
                for a stranger's message carries its headers only (text/rfc822-headers)
  loops         a transport to our own listener, to own_addresses, an MX on loopback while we
                listen on a wildcard address: bounced 5.4.6 "loops back to myself", accepted
                once; a filter on another loopback port still works; max_hops: 554 5.4.6
  memory        40 unfinished 4 MiB uploads against max_receive_memory = 32m: RSS grows by at
                most the budget plus a constant, 452 4.3.1 at DATA and at the end of data
  slow data     a trickle below min_data_rate, a steady upload past data_total_timeout: 421 4.4.2
  AUTH          per-client failures and max_concurrent_auth: 454 4.7.0 without a check; an
                unknown user costs what a known one does (dummy hash of the same scheme)
  PROXY         LOCAL / UNKNOWN headers from the balancer never get mynetworks trust
  IPv6          one /64 is one client for max_connections_per_client (in a network namespace)
  ports         cluster_insecure, hostname, /healthz under 100 idle connections, files 0600

Addresses: 127.0.51.x (this module only); strangers 127.0.0.99 and 127.0.0.101-110.
"""
import base64
import crypt
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import unittest
import urllib.request
import warnings

from relaytest import RELAYD, RelayTestCase, SmtpConn, wait_for, port_open

NET = "127.0.51."
RELAY = NET + "10"
PORT = 2525
LEGIT = NET + "1"          # in mynetworks
STRANGER = "127.0.0.99"    # not
SINK = NET + "25"
DNS = NET + "53"
HTTP = NET + "10:8025"


def metrics(http=HTTP):
    with urllib.request.urlopen("http://%s/metrics" % http, timeout=5) as r:
        return r.read().decode()


def metric_now(name, http=HTTP, **labels):
    """The value of one sample (labels given exactly) in the last published snapshot, 0 when
    absent."""
    lab = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    want = "%s{%s}" % (name, lab) if labels else name
    for line in metrics(http).splitlines():
        if line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        if key == want:
            return float(val)
    return 0.0


def metric(name, at_least, http=HTTP, **labels):
    """The sample once it reaches at_least (/metrics is a snapshot published every 0.5 s:
    what just happened shows a moment later); then its value, which may be higher."""
    wait_for(lambda: metric_now(name, http, **labels) >= at_least, 10,
             "%s%s >= %s" % (name, labels, at_least))
    return metric_now(name, http, **labels)


class Sink:
    """aiosmtpd on addr:port: keeps (mail_from, rcpts, bytes); RCPT to reject@* gets 550."""

    def __init__(self, addr, port=25):
        from aiosmtpd.controller import Controller
        self.messages = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address.lower().startswith("reject@"):
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 Ok"

            async def handle_DATA(self, server, session, envelope):
                with sink.lock:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content))
                return "250 2.0.0 Ok: kept"

        self.controller = Controller(Handler(), hostname=addr, port=port, decode_data=False,
                                     data_size_limit=64 << 20, enable_SMTPUTF8=True,
                                     ready_timeout=10)

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        try:
            self.controller.stop()
        except Exception:
            pass

    def find(self, pred):
        with self.lock:
            return [m for m in self.messages if pred(m)]


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=node1.relay.test"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def send(source, mail_from, rcpts, body, port=PORT, host=RELAY):
    """One message over smtplib; returns the DATA reply (code, text)."""
    with smtplib.SMTP(host, port, local_hostname="client.test", source_address=(source, 0),
                      timeout=30) as s:
        s.ehlo()
        code, text = s.mail(mail_from)
        if code != 250:
            return code, text
        for r in rcpts:
            s.rcpt(r)
        return s.data(body)


def sanitized():
    """relayd built with ASan (its memory is not comparable)."""
    out = subprocess.run(["ldd", RELAYD], capture_output=True, text=True).stdout
    return "libasan" in out


def rss_kb(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class AbuseTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(SINK).start()
        cls.filter = Sink(RELAY, 10025).start()  # a content filter on our own address

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()
        cls.filter.stop()

    def node(self, **keys):
        base = dict(addr=RELAY, port=PORT, mynetworks=LEGIT + "/32", relay_domains="dst.test",
                    http_listen=HTTP,
                    transport="dst.test=%s:25, victim.test=%s:25, legit.test=%s:25, "
                              "loop1.test=%s:%d, loop2.test=%s:2525, filter.test=%s:10025"
                              % (SINK, SINK, SINK, RELAY, PORT, NET + "77", RELAY),
                    own_addresses=NET + "77:2525", retry_base="1s", retry_max="2s")
        base.update(keys)
        n = self.relayd(**base)
        n.start()
        wait_for(lambda: port_open(RELAY, 8025), 10, "http endpoint")
        return n

    def legit_delivered(self, tag):
        """Legitimate mail during an attack: accepted and delivered."""
        code, text = send(LEGIT, "ok@legit.test", ["someone@dst.test"],
                          "Subject: legit %s\r\n\r\nlegit mail %s\r\n" % (tag, tag))
        self.assertEqual(code, 250, text)
        marker = ("legit mail %s" % tag).encode()
        wait_for(lambda: self.sink.find(lambda m: marker in m[2]), 30,
                 "legitimate mail %s delivered" % tag)

    def reject_logged(self, node, reason, cmd=None):
        pat = r"event=reject cmd=%s code=\d+ enh=[\d.]+ reason=%s " % (cmd or r"\S+", reason)
        wait_for(lambda: re.search(pat, node.log()), 10, "log line %s" % pat)

    # ---------------------------------------------------------------- 1. backscatter

    def test_postmaster_and_bounce_content(self):
        node = self.node()
        c = SmtpConn(RELAY, PORT, source=STRANGER)
        self.assertEqual(c.reply()[0], 220)
        c.cmd("EHLO stranger.example")
        self.assertEqual(c.cmd("MAIL FROM:<victim@victim.test>")[0], 250)
        code, lines = c.cmd("RCPT TO:<postmaster>")
        self.assertEqual(code, 550, lines)
        self.assertIn("5.1.1", lines[0])
        # one grammar: a quoted local part with a space is accepted, and sent as accepted
        self.assertEqual(c.cmd('RCPT TO:<"a b"@dst.test>')[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        self.assertEqual(c.cmd("Subject: quoted\r\n\r\nquoted-local-part\r\n.")[0], 250)
        c.cmd("QUIT")
        c.close()
        self.assertEqual(metric("relay_messages_rejected_total", 1, reason="no_postmaster"), 1)
        self.assertRegex(node.log(), r"event=reject cmd=RCPT code=550 enh=5\.1\.1 "
                         r"reason=no_postmaster client=127\.0\.0\.99 hint=\"set postmaster_address")
        got = wait_for(lambda: self.sink.find(lambda m: b"quoted-local-part" in m[2]), 30,
                       "the quoted-local-part message")
        self.assertEqual(got[0][1], ['"a b"@dst.test'])

        # a stranger's message that bounces: the DSN carries its headers only
        secret = b"SECRET-BODY-OF-THE-STRANGER"
        code, _ = send(STRANGER, "victim@victim.test", ["reject@dst.test"],
                       b"Subject: spam for the victim\r\n\r\n" + secret + b"\r\n")
        self.assertEqual(code, 250)
        dsn = wait_for(lambda: self.sink.find(
            lambda m: m[0] in ("", "<>") and b"spam for the victim" in m[2]), 30, "the DSN")[0][2]
        self.assertIn(b"text/rfc822-headers", dsn)
        self.assertNotIn(secret, dsn)
        self.assertRegex(node.log(), r"event=dsn action=failed .* bounce_content=headers")
        # a trusted client's bounce keeps the whole message (RET absent: full)
        mine = b"TRUSTED-BODY-MARKER"
        code, _ = send(LEGIT, "ok@legit.test", ["reject@dst.test"],
                       b"Subject: mine bounces\r\n\r\n" + mine + b"\r\n")
        self.assertEqual(code, 250)
        dsn = wait_for(lambda: self.sink.find(
            lambda m: m[0] in ("", "<>") and b"mine bounces" in m[2]), 30, "the trusted DSN")[0][2]
        self.assertIn(b"message/rfc822", dsn)
        self.assertIn(mine, dsn)
        self.legit_delivered("backscatter")

    def test_postmaster_routed(self):
        self.node(postmaster_address="ops@dst.test")
        code, _ = send(STRANGER, "victim@victim.test", ["postmaster", "PostMaster@node1.relay.test"],
                       "Subject: to the postmaster\r\n\r\npm-body\r\n")
        self.assertEqual(code, 250)
        got = wait_for(lambda: self.sink.find(lambda m: b"pm-body" in m[2]), 30, "postmaster mail")
        self.assertEqual(sorted(got[0][1]), ["ops@dst.test", "ops@dst.test"])

    # ---------------------------------------------------------------- 2. loops

    def test_loops_bounce_never_connect(self):
        node = self.node()
        for dom in ("loop1.test", "loop2.test"):
            code, _ = send(LEGIT, "ok@legit.test", ["u@" + dom],
                           "Subject: loop %s\r\n\r\nloop body\r\n" % dom)
            self.assertEqual(code, 250)
            dsn = wait_for(lambda: self.sink.find(
                lambda m: m[0] in ("", "<>") and ("loop %s" % dom).encode() in m[2]), 30,
                "the DSN of the loop to %s" % dom)[0][2]
            self.assertIn(("mail for %s loops back to myself" % dom).encode(), dsn)
            self.assertIn(b"5.4.6", dsn)
        self.assertGreaterEqual(metric("relay_delivery_loops_total", 2), 2)
        self.assertEqual(metric("relay_messages_accepted_total", 2), 2)  # no message came back
        self.assertRegex(node.log(), r"event=loop dest=host:127\.0\.51\.10:2525")
        # our own address on another port is another program (a filter): delivered
        code, _ = send(LEGIT, "ok@legit.test", ["u@filter.test"], "Subject: f\r\n\r\nto-filter\r\n")
        self.assertEqual(code, 250)
        wait_for(lambda: self.filter.find(lambda m: b"to-filter" in m[2]), 30, "the filter")

    def test_mx_on_loopback_with_wildcard_listener(self):
        from dsttest import Dnsmasq
        dns = Dnsmasq(self.tmp, DNS, mx=[("far.test", "mx.far.test", 10)],
                      a=[("mx.far.test", "127.0.0.1")]).start()
        self.addCleanup(dns.stop)
        port = 25510  # a wildcard listener takes the port on every address
        node = self.relayd(name="wild", addr="0.0.0.0", port=port, mynetworks=LEGIT + "/32",
                           dns_servers=DNS + ":53", relayhost="far.test:%d" % port,
                           transport="legit.test=%s:25" % SINK, http_listen=NET + "11:8025",
                           retry_base="1s")
        node.addr = RELAY  # where the test reaches it
        node.start()
        code, _ = send(LEGIT, "ok@legit.test", ["u@far.test"],
                       "Subject: wild loop\r\n\r\nx\r\n", port=port)
        self.assertEqual(code, 250)
        dsn = wait_for(lambda: self.sink.find(
            lambda m: m[0] in ("", "<>") and b"wild loop" in m[2]), 30, "the wildcard loop's DSN")[0][2]
        self.assertIn(b"mail for far.test loops back to myself", dsn)
        http = NET + "11:8025"
        self.assertEqual(metric("relay_messages_accepted_total", 1, http=http), 1)
        self.assertGreaterEqual(metric("relay_delivery_loops_total", 1, http=http), 1)

    def test_max_hops(self):
        node = self.node(max_hops=10)
        hops = "".join("Received: from h%d by h%d; Thu, 3 Dec 2026 10:00:00 +0000\r\n" % (i, i + 1)
                       for i in range(10))
        code, text = send(STRANGER, "victim@victim.test", ["x@dst.test"],
                          hops + "Subject: looping\r\n\r\nbody\r\n")
        self.assertEqual(code, 554, text)
        self.assertIn(b"5.4.6", text)
        self.assertEqual(metric("relay_messages_rejected_total", 1, reason="too_many_hops"), 1)
        self.reject_logged(node, "too_many_hops", "DATA")
        code, _ = send(STRANGER, "victim@victim.test", ["x@dst.test"],
                       hops.split("\r\n", 1)[1] + "Subject: 9 hops\r\n\r\nbody\r\n")
        self.assertEqual(code, 250)
        self.legit_delivered("hops")

    # ---------------------------------------------------------------- 3. memory and time

    def test_receive_memory_budget(self):
        budget = 32 << 20
        node = self.node(max_message_size="8m", max_receive_memory="32m",
                         max_connections_per_client=200, data_timeout="120s")
        self.legit_delivered("warm-up")
        pid = node.proc.pid
        base = rss_kb(pid)
        chunk = (b"x" * 998 + b"\r\n") * 1024  # 1 MiB of lines
        conns = []
        for i in range(40):  # 40 uploads at once, as in the attack
            c = SmtpConn(RELAY, PORT, source=STRANGER, timeout=60)
            c.reply()
            c.cmd("EHLO stranger.example")
            c.cmd("MAIL FROM:<victim@victim.test>")
            c.cmd("RCPT TO:<x@dst.test>")
            code, lines = c.cmd("DATA")
            conns.append((c, code))
        for _ in range(4):  # then 4 MiB each, a MiB at a time round the connections
            for c, code in conns:
                if code == 354:
                    c.send(chunk)
        # the uploads are unfinished: the budget bounds what they hold
        wait_for(lambda: metric_now("relay_smtp_receive_memory_peak_bytes") >= budget * 0.6, 60,
                 "the budget to fill")
        peak = rss_kb(pid, "VmHWM")
        grown_mib = (peak - base) / 1024.0
        print("RSS before %d KiB, peak %d KiB: grew %.1f MiB under 160 MiB of uploads "
              "(budget 32 MiB)" % (base, peak, grown_mib))
        if not sanitized():  # ASan's quarantine and shadow memory are not relayd's
            self.assertLess(grown_mib, 32 + 40, "RSS grew past the budget plus a constant")
        self.assertLessEqual(metric_now("relay_smtp_receive_memory_peak_bytes"), budget)
        # a stranger's DATA now finds no room: 452 4.3.1 at once
        c = SmtpConn(RELAY, PORT, source="127.0.0.101")
        c.reply()
        c.cmd("EHLO stranger.example")
        c.cmd("MAIL FROM:<victim@victim.test>")
        c.cmd("RCPT TO:<x@dst.test>")
        c.cmd("RSET")
        c.cmd("MAIL FROM:<victim@victim.test> SIZE=8000000")
        c.cmd("RCPT TO:<x@dst.test>")
        code, lines = c.cmd("DATA")
        self.assertEqual(code, 452, lines)
        self.assertIn("4.3.1", lines[0])
        c.close()
        # trusted mail still gets in (strangers fill at most 3/4 of the budget)
        self.legit_delivered("during-upload")
        # the uploads end: those the budget held are queued; the others were refused 452 4.3.1,
        # at DATA once the budget was full, or at the end of a body that outgrew it
        data_codes = [code for _, code in conns]
        codes = []
        for c, code in conns:
            if code == 354:
                c.send(b".\r\n")
                codes.append(c.reply()[0])
            c.close()
        print("DATA replies:", {k: data_codes.count(k) for k in set(data_codes)},
              "end-of-data replies:", {k: codes.count(k) for k in set(codes)})
        refused = data_codes.count(452) + codes.count(452)
        self.assertGreater(refused, 0)
        self.assertLessEqual(set(data_codes), {354, 452})
        self.assertLessEqual(set(codes), {250, 452})
        self.assertLessEqual(codes.count(250) * 4, 24)  # at most the strangers' 3/4 of 32 MiB
        metric("relay_messages_rejected_total", 1 + refused, reason="over_budget")
        self.reject_logged(node, "over_budget", "DATA")
        wait_for(lambda: metric_now("relay_smtp_receive_memory_bytes") == 0, 30, "the budget back")

    def test_slow_data_is_cut(self):
        node = self.node(data_timeout="2s", min_data_rate="1000", data_total_timeout="4s")
        results = {}

        def upload(name, source, piece, every):
            c = SmtpConn(RELAY, PORT, source=source, timeout=20)
            c.reply()
            c.cmd("EHLO slow.example")
            c.cmd("MAIL FROM:<victim@victim.test>")
            c.cmd("RCPT TO:<x@dst.test>")
            c.cmd("DATA")
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 15:
                    c.send(piece)
                    c.sock.settimeout(every)
                    try:
                        results[name] = (c.reply(), time.monotonic() - t0)
                        return
                    except socket.timeout:
                        pass
            except (ConnectionError, OSError) as e:
                results[name] = (("closed", str(e)), time.monotonic() - t0)
            finally:
                c.close()

        # a trickle: 100 bytes every 0.5 s (200 B/s < min_data_rate), never idle for data_timeout
        # a steady upload: 10 kB/s, fast enough, but longer than data_total_timeout
        ts = [threading.Thread(target=upload, args=("trickle", STRANGER, b"y" * 98 + b"\r\n", 0.5)),
              threading.Thread(target=upload, args=("steady", "127.0.0.102",
                                                    (b"z" * 998 + b"\r\n") * 5, 0.5))]
        for t in ts:
            t.start()
        self.legit_delivered("slow-data")
        for t in ts:
            t.join(30)
        for name, want in (("trickle", "min_data_rate"), ("steady", "data_total_timeout")):
            (code, lines), took = results[name]
            self.assertEqual(code, 421, (name, lines))
            self.assertIn("4.4.2", lines[0])
            print("%s cut after %.1fs" % (name, took))
            self.assertEqual(metric("relay_smtp_data_cut_total", 1, reason=want), 1)
        self.assertLess(results["trickle"][1], 6)
        self.assertGreater(results["steady"][1], 3.5)
        self.reject_logged(node, "data_rate")
        self.reject_logged(node, "data_total")

    # ---------------------------------------------------------------- 4. AUTH floods

    def test_auth_floods(self):
        cert, key = make_cert(self.tmp)
        users = os.path.join(self.tmp, "users")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            h = crypt.crypt("right password", "$6$rounds=400000$abcdefgh")
        with open(users, "w") as f:
            f.write("alice:%s\n" % h)
        node = self.node(tls_cert=cert, tls_key=key, auth_users_file=users,
                         auth_failures_per_minute_per_client=3, max_concurrent_auth=2,
                         max_errors=50)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def session(source):
            s = smtplib.SMTP(RELAY, PORT, local_hostname="auth.example",
                             source_address=(source, 0), timeout=60)
            s.starttls(context=ctx)
            s.ehlo()
            return s

        def plain(user, pw):
            return "PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()

        # the timing of a wrong password and of an unknown user: the same scheme and cost.
        # The checks run at nice +10 (auth_pool.h), so a test running beside this one (ctest
        # -j2) can stretch any one of them several times over (a CI run measured 0.843 s for
        # the wrong password and 0.119 s for the unknown user, 0.9 s each in the run before):
        # three of each, interleaved, each client within its 3 failures a minute, and the
        # fastest of each compared (the cost of the check itself)
        sk, su = session("127.0.0.103"), session("127.0.0.104")
        known, unknown = [], []
        for _ in range(3):
            for s, user, out in ((sk, "alice", known), (su, "nobody", unknown)):
                t0 = time.monotonic()
                self.assertEqual(s.docmd("AUTH", plain(user, "wrong"))[0], 535)
                out.append(time.monotonic() - t0)
        sk.close()
        su.close()
        print("AUTH wrong password %s s, unknown user %s s" % (
            " ".join("%.3f" % x for x in known), " ".join("%.3f" % x for x in unknown)))
        self.assertGreater(min(unknown), min(known) * 0.3)

        # one client: 3 failures a minute, then 454 without a check
        s = session(STRANGER)
        for _ in range(3):
            self.assertEqual(s.docmd("AUTH", plain("alice", "guess"))[0], 535)
        t0 = time.monotonic()
        code, text = s.docmd("AUTH", plain("alice", "right password"))
        self.assertEqual(code, 454, text)
        self.assertIn(b"4.7.0", text)
        self.assertLess(time.monotonic() - t0, sorted(known)[1] / 2 + 0.05)  # no crypt ran
        s.close()
        self.reject_logged(node, "auth_failures_per_minute", "AUTH")

        # many clients at once: at most max_concurrent_auth checks, the rest 454 at once
        sess = [session("127.0.0.%d" % (105 + i)) for i in range(6)]
        for s in sess:
            s.send(("AUTH %s\r\n" % plain("alice", "flood")).encode())
        t0 = time.monotonic()
        self.legit_delivered("auth-flood")
        accept_s = time.monotonic() - t0
        codes = [s.getreply()[0] for s in sess]
        for s in sess:
            s.close()
        print("flood replies %s; legit mail delivered %.2fs into the flood" % (codes, accept_s))
        self.assertIn(454, codes)
        self.assertIn(535, codes)
        self.assertLessEqual(codes.count(535), 2 + 1)  # two at once, one may finish early
        self.reject_logged(node, "max_concurrent_auth", "AUTH")
        metric("relay_smtp_auth_total", 1 + codes.count(454), result="throttled")
        # the real password still works (from an address with no failures)
        s = session("127.0.0.110")
        self.assertEqual(s.docmd("AUTH", plain("alice", "right password"))[0], 235)
        s.close()

    # ---------------------------------------------------------------- 5. PROXY and ports

    def test_proxy_local_is_not_trusted(self):
        # the balancer (LEGIT) is in mynetworks; its LOCAL/UNKNOWN connections are not
        node = self.node(proxy_from=LEGIT + "/32")
        v2_local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0x00, 0x00])
        for name, header in (("v2 LOCAL", v2_local), ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n")):
            c = SmtpConn(RELAY, PORT, source=LEGIT)
            c.send(header)
            self.assertEqual(c.reply()[0], 220, name)
            c.cmd("EHLO lb.example")
            c.cmd("MAIL FROM:<a@legit.test>")
            code, lines = c.cmd("RCPT TO:<x@elsewhere.example>")
            self.assertEqual(code, 554, (name, lines))
            self.assertIn("Relay access denied", lines[0])
            c.close()
        self.assertRegex(node.log(), r"event=connect client=127\.0\.51\.1 trusted=no .*proxy=local")
        # a real PROXY v1 naming a client in mynetworks keeps working
        c = SmtpConn(RELAY, PORT, source=LEGIT)
        c.send(b"PROXY TCP4 127.0.51.1 127.0.51.10 40000 2525\r\n")
        self.assertEqual(c.reply()[0], 220)
        c.cmd("EHLO lb.example")
        c.cmd("MAIL FROM:<a@legit.test>")
        self.assertEqual(c.cmd("RCPT TO:<x@elsewhere.example>")[0], 250)
        c.close()

    def test_ports_and_files(self):
        node = self.node()
        # /healthz answers while strangers hold 100 idle connections to the HTTP port
        idle = []
        for i in range(100):
            s = socket.socket()
            s.bind(("127.0.0.%d" % (101 + i % 10), 0))
            s.connect((RELAY, 8025))
            idle.append(s)
        t0 = time.monotonic()
        with urllib.request.urlopen("http://%s/healthz" % HTTP, timeout=5) as r:
            self.assertEqual(r.status, 200)
        print("/healthz under 100 idle connections: %.3fs" % (time.monotonic() - t0))
        for s in idle:
            s.close()
        # everything in data_dir is relayd's user's alone
        loose = []
        for root, dirs, files in os.walk(node.data_dir):
            for f in dirs + files:
                p = os.path.join(root, f)
                if os.stat(p).st_mode & 0o077:
                    loose.append(p)
        self.assertEqual(os.stat(node.data_dir).st_mode & 0o777, 0o700)
        self.assertEqual(loose, [])
        # config: a plain cluster port off loopback needs cluster_insecure; hostname is checked
        base = [RELAYD, "--config", node.conf_path, "--print-config"]
        r = subprocess.run(base + ["--cluster-listen=10.9.9.9:7401", "--peers=node1=10.9.9.9:7401,"
                                   "n2=10.9.9.8:7401"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("cluster_insecure", r.stderr)
        r = subprocess.run(base + ["--cluster-listen=10.9.9.9:7401", "--cluster-insecure=yes",
                                   "--peers=node1=10.9.9.9:7401,n2=10.9.9.8:7401"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        for bad in ("bad_host", "-x.example", "a..b", "x" * 64 + ".example"):
            r = subprocess.run(base + ["--hostname=" + bad], capture_output=True, text=True,
                               timeout=20)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("hostname", r.stderr)
        for key, bad in (("bounce_content", "some"), ("cluster_insecure", "maybe"),
                         ("postmaster_address", "postmaster"), ("max_receive_memory", "1k"),
                         ("client_ipv6_prefix", "129"), ("tls_ciphers", "NO-SUCH-CIPHER")):
            r = subprocess.run([RELAYD, "--config", node.conf_path,
                                "--%s=%s" % (key.replace("_", "-"), bad)],
                               capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 2, (key, r.stderr))
            self.assertIn(key, r.stderr)

    def test_cluster_port_refuses_admin_certificate(self):
        """relayctl's certificate (admin CA) cannot open a cluster connection; a member's can."""
        certs = os.path.join(self.tmp, "certs")
        subprocess.run(["bash", os.path.join(os.path.dirname(__file__),
                                             "../../scripts/make-cluster-certs.sh"), certs, "2"],
                       check=True, capture_output=True)
        cl = NET + "12:7401"
        node = self.relayd(name="node1", addr=NET + "12", port=PORT, cluster_listen=cl,
                           peers="node1=%s, node2=%s:7401" % (cl, NET + "13"),
                           cluster_ca=certs + "/ca.crt", cluster_cert=certs + "/node1.crt",
                           cluster_key=certs + "/node1.key")
        node.start()
        wait_for(lambda: port_open(NET + "12", 7401), 20, "the cluster port")

        def handshake(name):
            r = subprocess.run(["openssl", "s_client", "-connect", cl, "-tls1_2",
                                "-CAfile", certs + "/ca.crt", "-cert", "%s/%s.crt" % (certs, name),
                                "-key", "%s/%s.key" % (certs, name), "-servername", "node1"],
                               input="", capture_output=True, text=True, timeout=30)
            return r.returncode, r.stdout + r.stderr

        code, out = handshake("admin")
        self.assertNotEqual(code, 0, out)
        self.assertRegex(out, r"alert|unknown ca|certificate")
        code, out = handshake("node2")
        self.assertEqual(code, 0, out)


class Ipv6PrefixTest(unittest.TestCase):
    """max_connections_per_client counts one IPv6 /64 as one client (client_ipv6_prefix): relayd
    and its clients in a network namespace of their own, on documentation addresses."""

    NS = "abuse6-%d" % os.getpid()

    def setUp(self):
        import tempfile
        self.tmp = tempfile.mkdtemp(prefix="relaytest-")
        subprocess.run(["ip", "netns", "add", self.NS], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.NS], capture_output=True)
        sh = ["ip", "netns", "exec", self.NS]
        subprocess.run(sh + ["ip", "link", "set", "lo", "up"], check=True)
        for a in ("2001:db8:51::10", "2001:db8:52::1", "2001:db8:52::2", "2001:db8:52::3",
                  "2001:db8:53::1"):
            subprocess.run(sh + ["ip", "-6", "addr", "add", a + "/128", "dev", "lo", "nodad"],
                           check=True)
        conf = os.path.join(self.tmp, "relay.conf")
        with open(conf, "w") as f:
            f.write("node_id = v6\nhostname = v6.relay.test\ndata_dir = %s/data\n"
                    "smtp_listen = [2001:db8:51::10]:2525\ndns_servers = 127.0.0.1:9\n"
                    "max_connections_per_client = 2\nclient_ipv6_prefix = 64\n" % self.tmp)
        self.log = open(os.path.join(self.tmp, "relay.log"), "wb")
        self.proc = subprocess.Popen(sh + [RELAYD, "--config", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.addCleanup(self.stop)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def test_one_slash64_is_one_client(self):
        # a client in the namespace: one connection per source, each held open, greeting codes
        script = r"""
import socket, sys, time
socks, codes = [], []
for src in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6)
    s.bind((src, 0))
    s.settimeout(10)
    for _ in range(100):
        try:
            s.connect(("2001:db8:51::10", 2525)); break
        except OSError:
            time.sleep(0.1)
    codes.append(s.recv(512)[:3].decode())
    socks.append(s)
print(" ".join(codes))
"""
        r = subprocess.run(["ip", "netns", "exec", self.NS, "/usr/bin/python3", "-c", script,
                            "2001:db8:52::1", "2001:db8:52::2", "2001:db8:52::3",
                            "2001:db8:53::1"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        # the third of 2001:db8:52::/64 is refused; 2001:db8:53::/64 is another client
        self.assertEqual(r.stdout.split(), ["220", "220", "421", "220"])
        with open(os.path.join(self.tmp, "relay.log")) as f:
            self.assertRegex(f.read(), r"event=refused client=2001:db8:52::3 "
                             r"client_key=2001:db8:52::/64 reason=\"too many connections")


if __name__ == "__main__":
    unittest.main()
