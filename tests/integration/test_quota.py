"""Exact hourly quotas across a 3-node cluster behind HAProxy (issue 13 part 2).

Nodes n1-n3 on 127.0.32.11-13 (SMTP 2525, cluster 7401, admin 7402), HAProxy on 127.0.32.1:2525
balancing round robin over them with PROXY v2 headers (from 127.0.32.2, the nodes'
`proxy_from`), so every node sees the real client.  Clients send from 127.0.32.50 (per-client
quota) and, authenticated, from 127.0.32.99 (in mynetworks: only the per-user quota counts).

- max_messages_per_hour_per_client = 10: 3 threads x 12 messages, one connection each, all at
  once through HAProxy (so through all three nodes, in parallel: a node's early MAIL check
  cannot see what the others are accepting): exactly 10 are accepted; the rest get
  450 4.7.1 naming the reset time; every node's queue holds exactly those 10, and
  `relayctl quota 127.0.32.50 --json` on every node says 10;
- max_messages_per_hour_per_user = 7 for alice: the same, with AUTH over STARTTLS.
- the other parts of issue 13 through the same cluster and balancer: alice may not send as
  bob (553 5.7.1 from whichever node took the connection); a message from mynetworks with
  From: in sign.example is signed by the node that accepted it (RSA-2048 and Ed25519), reaches
  the destination from the domain's owner (any node) and verifies with python3-dkim.
No other message is delivered (dns_servers is a closed port, retry_base 1h).  Every wait has a
deadline; every process started is stopped.
"""
import json
import os
import re
import smtplib
import ssl
import subprocess
import threading
import time

from dsttest import AioSink
from relaytest import RelayTestCase, wait_for
from test_dkim import dns_p, gen_key
from test_tls_auth import make_cert, make_users

RELAYCTL = os.environ.get("RELAYCTL", os.path.join(os.path.dirname(__file__),
                                                   "../../build/node/relayctl"))
ADDRS = ["127.0.32.11", "127.0.32.12", "127.0.32.13"]
NAMES = ["n1", "n2", "n3"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
LB, LB_PORT, LB_SRC = "127.0.32.1", 2525, "127.0.32.2"
CLIENT = "127.0.32.50"
CLIENT2 = "127.0.32.51"
TRUSTED = "127.0.32.99"
CLIENT_QUOTA, USER_QUOTA = 10, 7
DEST = "127.0.32.25"


def ctl_json(addr, *args):
    r = subprocess.run([RELAYCTL, "--server", "%s:7402" % addr, "--timeout", "3s", "--json",
                        *args], capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


class QuotaClusterTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        cert, key = make_cert(self.tmp)
        users = make_users(self.tmp, {"alice": "wonderland"})
        self.rsa = gen_key(os.path.join(self.tmp, "rsa.pem"), "rsa2048")
        self.ed = gen_key(os.path.join(self.tmp, "ed.pem"), "ed25519")
        perms = os.path.join(self.tmp, "senders")
        with open(perms, "w") as f:
            f.write("alice: alice@client.example, @client.example\n")
        self.sink = AioSink(DEST, port=2525).start()
        self.cl = []
        for name, addr in zip(NAMES, ADDRS):
            self.cl.append(self.relayd(
                name=name, addr=addr, port=2525, cluster_listen="%s:7401" % addr, peers=PEERS,
                admin_listen="%s:7402" % addr, election_timeout="500ms",
                heartbeat_interval="50ms", propose_timeout="10s", retry_base="1h",
                retry_max="2h", proxy_from=LB_SRC + "/32", mynetworks=TRUSTED + "/32",
                relay_domains="far.example", tls_cert=cert, tls_key=key,
                auth_users_file=users, max_messages_per_hour_per_client=CLIENT_QUOTA,
                max_messages_per_hour_per_user=USER_QUOTA, sender_permissions_file=perms,
                dkim_keys="sign.example:r1:%s, sign.example:e1:%s" % (self.rsa, self.ed),
                transport="dest.example=[%s]:2525" % DEST))
        for n in self.cl:
            n.start()
        wait_for(self.agreed_leader, 30, "an agreed leader", interval=0.2)
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("global\n    maxconn 200\n    noreuseport\n"
                    "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n"
                    "    timeout server 1m\n"
                    "frontend smtp\n    bind %s:%d\n    default_backend relayd\n"
                    "backend relayd\n    balance roundrobin\n    source %s\n"
                    "    default-server send-proxy-v2\n" % (LB, LB_PORT, LB_SRC))
            for name, addr in zip(NAMES, ADDRS):
                f.write("    server %s %s:2525\n" % (name, addr))
        self.hlog = open(os.path.join(self.tmp, "haproxy.log"), "wb")
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=self.hlog,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        from relaytest import port_open
        wait_for(lambda: self.haproxy.poll() is not None or port_open(LB, LB_PORT), 10,
                 "HAProxy listening")
        self.assertIsNone(self.haproxy.poll(), "haproxy exited")
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def tearDown(self):
        self.sink.stop()
        if self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        self.hlog.close()
        for n in self.nodes:
            if n.alive():
                n.stop()
        super().tearDown()

    def agreed_leader(self):
        leaders = set()
        for a in ADDRS:
            st = ctl_json(a, "status")
            if st is None or not st["leader"]:
                return None
            leaders.add(st["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    def send_one(self, source, tag, user=None):
        """One message on its own connection through HAProxy: (code, text)."""
        with smtplib.SMTP(LB, LB_PORT, local_hostname="quota.test",
                          source_address=(source, 0), timeout=20) as s:
            if user:
                s.starttls(context=self.ctx)
                s.ehlo()
                s.user, s.password = user, "wonderland"
                code, text = s.auth("PLAIN", s.auth_plain)
                self.assertEqual(code, 235, text)
            else:
                s.ehlo()
            code, text = s.mail("s-%s@client.example" % tag)
            if code != 250:
                return code, text.decode()
            code, text = s.rcpt("r@far.example")
            self.assertEqual(code, 250, text)
            code, text = s.data("Subject: %s\r\n\r\nquota\r\n" % tag)
            return code, text.decode()

    def burst(self, source, threads, per_thread, user=None):
        results, lock = [], threading.Lock()
        start = threading.Barrier(threads)

        def run(t):
            start.wait()
            for i in range(per_thread):
                r = self.send_one(source, "%d-%d" % (t, i), user)
                with lock:
                    results.append(r)
        ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        self.assertEqual(len(results), threads * per_thread)
        return results

    def check_refusals(self, results, what):
        for code, text in results:
            if code == 250:
                continue
            self.assertEqual(code, 450, text)
            self.assertRegex(text, r"^4\.7\.1 Hourly message quota reached for %s \(\d+ per "
                                   r"hour\); it resets at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$" %
                             re.escape(what))

    def wait_counts(self, name, kind, want):
        def agreed():
            for a in ADDRS:
                q = ctl_json(a, "quota", name)
                if q is None:
                    return False
                ws = [w for w in q["windows"] if w["kind"] == kind]
                if len(ws) != 1 or ws[0]["count"] != want:
                    return False
            return True
        wait_for(agreed, 15, "every node counting %d for %s" % (want, name), interval=0.2)

    def wait_queue(self, want):
        def agreed():
            for a in ADDRS:
                st = ctl_json(a, "status")
                if st is None or st["queue"]["messages"] != want:
                    return False
            return True
        wait_for(agreed, 15, "%d messages queued on every node" % want, interval=0.2)

    def test_client_and_user_quota_exact_across_nodes(self):
        # per client: 36 tries in parallel through all three nodes, exactly 10 accepted
        res = self.burst(CLIENT, 3, 12)
        accepted = [t for c, t in res if c == 250]
        self.assertEqual(len(accepted), CLIENT_QUOTA, res)
        self.check_refusals(res, "client " + CLIENT)
        self.wait_counts(CLIENT, "client", CLIENT_QUOTA)
        self.wait_queue(CLIENT_QUOTA)
        # every node took some of the connections (round robin), and more than one node
        # accepted (so the count is the cluster's, not one node's)
        took = [sum(1 for l in n.log().splitlines()
                    if "event=connect client=%s" % CLIENT in l) for n in self.cl]
        self.assertTrue(all(k >= 1 for k in took), took)
        acc = [sum(1 for l in n.log().splitlines()
                   if "event=queued" in l) for n in self.cl]
        self.assertGreaterEqual(sum(1 for k in acc if k), 2, acc)
        # some refusals came from the replicated count at the end of DATA (the parallel
        # senders passed a node's early check), or at MAIL once a node had applied the 10
        logs = "".join(n.log() for n in self.cl)
        self.assertIn("event=reject cmd=MAIL code=450", logs)

        # per user (alice, from mynetworks: no client quota there): exactly 7
        res = self.burst(TRUSTED, 3, 5, user="alice")
        self.assertEqual(sum(1 for c, _ in res if c == 250), USER_QUOTA, res)
        self.check_refusals(res, "user alice")
        self.wait_counts("alice", "user", USER_QUOTA)
        self.wait_queue(CLIENT_QUOTA + USER_QUOTA)

        # the decision at apply: 12 sessions through all nodes pass MAIL and RCPT while nothing
        # is counted yet, then each sends its DATA: the replicated count lets exactly 10 in
        # and the other two hear 450 at the end of DATA
        conns = []
        for i in range(12):
            s = smtplib.SMTP(LB, LB_PORT, local_hostname="quota.test",
                             source_address=(CLIENT2, 0), timeout=20)
            s.ehlo()
            self.assertEqual(s.mail("late-%d@client.example" % i)[0], 250)
            self.assertEqual(s.rcpt("r@far.example")[0], 250)
            conns.append(s)
        res = []
        for i, s in enumerate(conns):
            code, text = s.data("Subject: late %d\r\n\r\nquota\r\n" % i)
            res.append((code, text.decode()))
            s.close()
        self.assertEqual([c for c, _ in res], [250] * 10 + [450] * 2, res)
        self.check_refusals(res, "client " + CLIENT2)
        self.assertIn("event=reject cmd=DATA code=450 enh=4.7.1",
                      "".join(n.log() for n in self.cl))
        self.wait_counts(CLIENT2, "client", CLIENT_QUOTA)
        self.wait_queue(2 * CLIENT_QUOTA + USER_QUOTA)

        # relayctl quota: every window, highest count first; the human table too
        q = ctl_json(ADDRS[1], "quota")
        self.assertEqual([(w["kind"], w["name"], w["count"], w["limit"]) for w in q["windows"]],
                         [("client", CLIENT, 10, 10), ("client", CLIENT2, 10, 10),
                          ("user", "alice", 7, 7)])
        for w in q["windows"]:
            self.assertEqual(w["reset_ms"] - w["start_ms"], 3600 * 1000)
            self.assertGreater(w["reset_ms"], q["now_ms"])
        r = subprocess.run([RELAYCTL, "--server", "%s:7402" % ADDRS[2], "quota"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"client +127\.0\.32\.50 +10 +10 +\d+m")
        self.assertRegex(r.stdout, r"user +alice +7 +7 +\d+m")
        r = subprocess.run([RELAYCTL, "--server", "%s:7402" % ADDRS[0], "quota", "nobody"],
                           capture_output=True, text=True, timeout=60)
        self.assertIn("nothing counted for nobody this hour", r.stdout)
        # an IPv6 address is looked up by its /64
        q = ctl_json(ADDRS[0], "quota", "2001:db8:1:2:3:4:5:6")
        self.assertEqual(q["client_key"], "2001:db8:1:2::/64")
        self.assertEqual(q["windows"], [])

    def test_sender_rights_and_dkim_through_the_cluster(self):
        import dkim
        # sender rights: refused by whichever node the balancer picked, three times over
        for i in range(3):
            with smtplib.SMTP(LB, LB_PORT, local_hostname="quota.test",
                              source_address=(CLIENT, 0), timeout=20) as s:
                s.starttls(context=self.ctx)
                s.ehlo()
                s.login("alice", "wonderland")
                code, text = s.mail("bob@other.example")
                self.assertEqual((code, text.decode()),
                                 (553, "5.7.1 <bob@other.example>: Sender address rejected: "
                                       "not owned by user alice"))
                self.assertEqual(s.mail("alice@client.example")[0], 250)
        # DKIM: signed on the accepting node, delivered by the domain's owner, verified
        keys = {b"r1": "v=DKIM1; k=rsa; p=" + dns_p(self.rsa, "rsa"),
                b"e1": "v=DKIM1; k=ed25519; p=" + dns_p(self.ed, "ed25519")}

        def dnsfunc(name, timeout=5):
            return keys[name.split(b".")[0]].encode()
        for i in range(3):
            with smtplib.SMTP(LB, LB_PORT, local_hostname="quota.test",
                              source_address=(TRUSTED, 0), timeout=20) as s:
                s.sendmail("news@sign.example", ["reader@dest.example"],
                           ("From: News <news@sign.example>\r\nTo: reader@dest.example\r\n"
                            "Subject: signed %d\r\n\r\nsigned once, replicated\r\n" % i).encode())
        wait_for(lambda: self.sink.count() >= 3, 30, "three signed messages delivered")
        for _, _, data in self.sink.snapshot():
            self.assertEqual(data.count(b"DKIM-Signature:"), 2, data[:400])
            for idx in (0, 1):
                d = dkim.DKIM(data)
                self.assertTrue(d.verify(idx=idx, dnsfunc=dnsfunc), (idx, data[:600]))
        signed_by = [n.name for n in self.cl if "event=dkim-signed d=sign.example" in n.log()]
        self.assertGreaterEqual(len(signed_by), 2, signed_by)


if __name__ == "__main__":
    import unittest
    unittest.main()
