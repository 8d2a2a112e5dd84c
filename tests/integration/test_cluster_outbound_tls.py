"""Outbound TLS through a 3-node cluster behind HAProxy (issue 13 part 4, end to end).

Three relayd (127.0.43.11-13, one Raft group) behind HAProxy (127.0.43.1:2525, PROXY v1), the
domains spread over them by delivery ownership.  DNS: the zone ctls.test, signed with
ldns-signzone, served by NSD (.2) and validated by unbound (.3, dns_dnssec_trusted = yes);
MTA-STS policies from an HTTPS server (.80:443) with a certificate of the test CA, which is the
nodes' tls_ca_file.  Destinations are aiosmtpd with STARTTLS:

  .21 mx-good.ctls.test  certificate of the test CA
  .22 the impostor: a certificate from another CA naming mx-imp.ctls.test
  .23 mx-ee.ctls.test    certificate of the test CA, TLSA 3 1 1 published

  ok.ctls.test      -> good     verify                     delivered
  sts.ctls.test     -> good     MTA-STS enforce            delivered
  dane.ctls.test    -> ee       dane-only                  delivered
  may.ctls.test     -> impostor may                        delivered
  verify.ctls.test  -> impostor verify                     refused (4.7.5)
  stsimp.ctls.test  -> impostor MTA-STS enforce            refused
  daneimp.ctls.test -> impostor dane, TLSA of another key  refused

Every accepted message to a "delivered" domain arrives exactly once; the impostor never gets a
message of a "refused" domain, whose recipients are deferred with a 4.7.5 reason by whichever
node owns the domain.
"""
import os
import re
import smtplib
import subprocess
import tempfile
import unittest
import urllib.request

from relaytest import RelayTestCase, _procs, port_open, wait_for
from dsttest import (AioSink, HttpsServer, Nsd, SignedZone, TestCA, Unbound,
                     server_tls_context, tlsa)

NET = "127.0.43."
LB, NS, RESOLVER, HTTPS = NET + "1", NET + "2", NET + "3", NET + "80"
GOOD, IMP, EE = NET + "21", NET + "22", NET + "23"
NAMES = ["t1", "t2", "t3"]
ADDRS = [NET + "11", NET + "12", NET + "13"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
Z = "ctls.test"

DELIVERED = {"ok": ("mx-good", GOOD, "verify"), "sts": ("mx-good", GOOD, "may"),
             "dane": ("mx-ee", EE, "dane-only"), "may": ("mx-imp", IMP, "may")}
REFUSED = {"verify": ("mx-imp", "verify"), "stsimp": ("mx-imp", "may"),
           "daneimp": ("mx-daneimp", "dane")}
PER_DOMAIN = 4

HAPROXY_CFG = """
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind {lb}:2525
    default_backend relays
backend relays
    balance roundrobin
{servers}
"""


def policy(*mx):
    return "version: STSv1\nmode: enforce\n%smax_age: 86400\n" % "".join(
        "mx: %s\n" % m for m in mx)


def metrics(addr):
    try:
        with urllib.request.urlopen("http://%s:8025/metrics" % addr, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return dict(l.rsplit(" ", 1) for l in text.splitlines() if l and not l.startswith("#"))


class ClusterOutboundTlsTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.peers = []
        ca = TestCA(self.tmp, "Cluster Test CA")
        other = TestCA(self.tmp, "Impostor CA")
        good = ca.issue("mx-good." + Z)
        ee = ca.issue("mx-ee." + Z)
        genuine = ca.issue("mx-daneimp." + Z)
        imp = other.issue("mx-imp." + Z, ["mx-imp." + Z, "mx-daneimp." + Z])
        web = ca.issue("mta-sts.sts." + Z, ["mta-sts.sts." + Z, "mta-sts.stsimp." + Z])
        rec = ["mx-good IN A " + GOOD, "mx-imp IN A " + IMP, "mx-ee IN A " + EE,
               "mx-daneimp IN A " + IMP,
               "_25._tcp.mx-ee IN TLSA " + tlsa(ee[2], 3, 1, 1),
               "_25._tcp.mx-daneimp IN TLSA " + tlsa(genuine[2], 3, 1, 1)]
        for d, (mx, _, _) in DELIVERED.items():
            rec.append("%s IN MX 10 %s" % (d, mx))
        for d, (mx, _) in REFUSED.items():
            rec.append("%s IN MX 10 %s" % (d, mx))
        for d, pid in (("sts", "c1"), ("stsimp", "c2")):
            rec.append('_mta-sts.%s IN TXT "v=STSv1; id=%s"' % (d, pid))
            rec.append("mta-sts.%s IN A %s" % (d, HTTPS))
        zone = SignedZone(self.tmp, Z, "".join(r + "\n" for r in rec), NS)
        self.peer(Nsd(self.tmp, NS, [(Z, zone.path)]))
        self.peer(Unbound(self.tmp, RESOLVER, [(Z, NS)], [zone.anchor], probe="mx-good." + Z))
        self.web = self.peer(HttpsServer(HTTPS, web[0], web[1], {
            "mta-sts.sts." + Z: (200, "text/plain", policy("mx-good." + Z)),
            "mta-sts.stsimp." + Z: (200, "text/plain", policy("mx-imp." + Z))}))
        self.sinks = {GOOD: self.peer(AioSink(GOOD, tls_context=server_tls_context(*good[:2]))),
                      IMP: self.peer(AioSink(IMP, tls_context=server_tls_context(*imp[:2]))),
                      EE: self.peer(AioSink(EE, tls_context=server_tls_context(*ee[:2])))}
        levels = ["%s.%s=%s" % (d, Z, lv) for d, (_, _, lv) in DELIVERED.items()]
        levels += ["%s.%s=%s" % (d, Z, lv) for d, (_, lv) in REFUSED.items()]
        self.cl = []
        for name, addr in zip(NAMES, ADDRS):
            self.cl.append(self.relayd(
                name=name, addr=addr, port=2525, cluster_listen="%s:7401" % addr, peers=PEERS,
                http_listen="%s:8025" % addr, election_timeout="500ms",
                heartbeat_interval="50ms", proxy_from=LB + "/32", dns_servers=RESOLVER + ":53",
                dns_dnssec_trusted="yes", tls_ca_file=ca.cert, tls_policy=" ".join(levels),
                retry_base="1s", retry_max="2s"))
        for n in self.cl:
            n.start()
        wait_for(lambda: all(float((metrics(a) or {}).get("relay_raft_has_leader", 0)) == 1
                             for a in ADDRS), 30, "a leader known to every node")
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            servers = ["    server %s %s:2525 send-proxy source %s" % (n, a, LB)
                       for n, a in zip(NAMES, ADDRS)]
            f.write(HAPROXY_CFG.format(lb=LB, servers="\n".join(servers)))
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg],
                                        stdout=open(os.path.join(self.tmp, "haproxy.log"), "w"),
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _procs.append(self.haproxy)
        wait_for(lambda: port_open(LB, 2525), 15, "haproxy listening")

    def peer(self, p):
        self.peers.append(p.start())
        return p

    def tearDown(self):
        codes = []
        try:
            codes = [(n.name, n.stop()) for n in self.cl if n.alive()]
        finally:
            self.haproxy.kill()
            self.haproxy.wait(10)
            for p in reversed(self.peers):
                p.stop()
            super().tearDown()
        for name, rc in codes:
            self.assertEqual(rc, 0, "relayd %s exit code on SIGTERM" % name)

    def send(self, rcpt):
        """One message through HAProxy; its queue id (retried on a 4xx while the cluster
        settles: a 451 means the client keeps the message, G1)."""
        def once():
            with smtplib.SMTP(LB, 2525, timeout=20) as s:
                s.ehlo("client.test")
                s.mail("sender@client.test")
                code, _ = s.rcpt(rcpt)
                if code != 250:
                    return None
                code, text = s.data("Subject: to %s\r\n\r\nhello\r\n" % rcpt)
                return re.search(r"queued as ([0-9A-F]+)", text.decode()).group(1) \
                    if code == 250 else None
        return wait_for(once, 30, "250 for %s" % rcpt, interval=0.2)

    def logs(self):
        return "\n".join(n.log() for n in self.cl)

    def test_levels_mta_sts_and_dane_through_the_cluster(self):
        sent = {}
        for i in range(PER_DOMAIN):
            for d in list(DELIVERED) + list(REFUSED):
                rcpt = "u%d@%s.%s" % (i, d, Z)
                sent[rcpt] = self.send(rcpt)

        def arrived(rcpt, addr):
            return [m for m in self.sinks[addr].snapshot() if rcpt in m[1]]

        for d, (_, addr, _) in DELIVERED.items():
            for i in range(PER_DOMAIN):
                rcpt = "u%d@%s.%s" % (i, d, Z)
                wait_for(lambda: arrived(rcpt, addr), 60, "%s delivered" % rcpt)
        # every refused recipient is deferred (by its domain's owner) with a 4.7.5 reason
        for d in REFUSED:
            for i in range(PER_DOMAIN):
                rcpt = "u%d@%s.%s" % (i, d, Z)
                pat = re.compile(r" %s to=<%s> .* dsn=4\.7\.5 status=deferred \(451 4\.7\.5 "
                                 r"TLS: (certificate|DANE) verification failed for "
                                 r"mx-(imp|daneimp)\.ctls\.test" % (sent[rcpt], re.escape(rcpt)))
                wait_for(lambda: pat.search(self.logs()), 60, "%s deferred" % rcpt)
        for d, (_, addr, _) in DELIVERED.items():
            for i in range(PER_DOMAIN):
                rcpt = "u%d@%s.%s" % (i, d, Z)
                self.assertEqual(len(arrived(rcpt, addr)), 1, "%s delivered twice" % rcpt)
        for d in REFUSED:
            self.assertEqual([m for m in self.sinks[IMP].snapshot()
                              if any(r.endswith("@%s.%s" % (d, Z)) for r in m[1])], [],
                             "the impostor got mail of %s" % d)
        logs = self.logs()
        self.assertIn("event=mta-sts-policy domain=sts.ctls.test id=c1 mode=enforce", logs)
        self.assertIn("event=mta-sts-policy domain=stsimp.ctls.test id=c2 mode=enforce", logs)
        # one owner per domain: each policy fetched by the node that delivers it
        self.assertLessEqual(self.web.count("mta-sts.sts." + Z), len(NAMES))
        self.assertGreaterEqual(self.web.count("mta-sts.sts." + Z), 1)
        owners = {d: sorted(n.name for n in self.cl if "@%s.%s> relay=" % (d, Z) in n.log())
                  for d in list(DELIVERED) + list(REFUSED)}
        print("owners:", owners)


if __name__ == "__main__":
    unittest.main()
