"""test_ownership: delivery ownership with leases and fencing across real processes (issue 5, G4).

Three relayd, each in its own network namespace (netns.py, prefix "rown", 10.202.0.0/24) joined by
a bridge, with mutual TLS between them (certificates per test from scripts/make-cluster-certs.sh,
as deployed).  The root namespace holds the far side on the bridge: dnsmasq (10.202.0.1:53) and
two aiosmtpd destinations, a fast one (10.202.0.1:25) and a slow one (10.202.0.2:25, SLOW s per
message) so attempts are in flight when an owner goes away.  The destinations note for every
transaction the time of MAIL and of the end of DATA, the client address (which node) and the
bench id header.  Nodes open at most 2 connections per destination, so the slow domains keep a
backlog of queued jobs: a node cut off still has work it could start.

- test_kill_then_cut_owner:
  1. 2000 messages (one or two recipients, 30 domains, a sixth of them slow) are sent to the three
     nodes; mid-run the node that has delivered most so far is SIGKILLed.  Every recipient of
     every accepted message must end delivered; a recipient delivered twice must have one copy
     that the dead node delivered before it died (an attempt completed at the destination whose
     outcome never committed): the test counts and reports them.
  2. The victim restarts and becomes LIVE again.  600 more messages; then the node that delivers
     most is cut off from the two others (iptables DROP inside its namespace; the destinations
     stay reachable for it).  It must start no transaction later than its lease allows (cut +
     lease + a small margin for an attempt being set up), every recipient still ends delivered
     by the others, duplicates again only from attempts it completed.  Healed, it rejoins.
"""
import asyncio
import os
import re
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

from relaytest import RelayTestCase, wait_for
from netns import Netns

PREFIX = "rown"
SUBNET = "10.202.0.0/24"
HOST = "10.202.0.1"
SLOW_ADDR = "10.202.0.2"
SLOW = 0.5
LEASE_S = 2.0
NAMES = ["o1", "o2", "o3"]
DOMAINS = ["d%d.own.test" % k for k in range(30)]
SLOW_DOMAINS = set(DOMAINS[:5])


class Dest:
    """An aiosmtpd destination in this process noting (mail time, data time, peer, rcpts, id)."""

    def __init__(self, addr, delay):
        from aiosmtpd.controller import Controller
        self.lock = threading.Lock()
        self.txns = []
        dest = self

        class H:
            async def handle_MAIL(self, server, session, envelope, address, mail_options):
                envelope.mail_from = address
                envelope.mail_time = time.monotonic()
                return "250 2.1.0 Ok"

            async def handle_DATA(self, server, session, envelope):
                if delay:
                    await asyncio.sleep(delay)
                bid = qid = None
                for line in envelope.original_content.split(b"\r\n"):
                    if line.startswith(b"X-Test-Id: "):
                        bid = line[11:].decode()
                    m = re.search(rb" id ([0-9A-F]+)", line)
                    if qid is None and m:
                        qid = m.group(1).decode()  # our Received: header names the queue id
                    if line == b"":
                        break
                with dest.lock:
                    dest.txns.append((getattr(envelope, "mail_time", time.monotonic()),
                                      time.monotonic(), session.peer[0],
                                      list(envelope.rcpt_tos), bid, qid))
                return "250 2.0.0 Ok"

        self.ctl = Controller(H(), hostname=addr, port=25, ready_timeout=10)

    def snap(self):
        with self.lock:
            return list(self.txns)


def metrics(addr):
    try:
        with urllib.request.urlopen("http://%s:8025/metrics" % addr, timeout=1) as r:
            return r.read().decode()
    except OSError:
        return ""


class OwnershipTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.net = Netns(PREFIX, 3, SUBNET).setup()
        self.addCleanup(self.net.close)
        subprocess.run(["ip", "addr", "add", SLOW_ADDR + "/24", "dev", self.net.bridge],
                       check=True)
        args = ["/usr/sbin/dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                "--conf-file=/dev/null", "--listen-address=" + HOST, "--port=53",
                "--bind-interfaces", "--local=/own.test/", "--user=root", "--group=root",
                "--pid-file=", "--local-ttl=60", "--address=/fast.own.test/" + HOST,
                "--address=/slow.own.test/" + SLOW_ADDR]
        for d in DOMAINS:
            args.append("--mx-host=%s,%s,10" % (d, "slow.own.test" if d in SLOW_DOMAINS
                                                else "fast.own.test"))
        self.dns = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (self.dns.kill(), self.dns.wait()))
        self.fast = Dest(HOST, 0)
        self.slow = Dest(SLOW_ADDR, SLOW)
        for d in (self.fast, self.slow):
            d.ctl.start()
            self.addCleanup(d.ctl.stop)
        peers = ",".join("%s=%s:7401" % (n, self.net.addr(i)) for i, n in enumerate(NAMES))
        self.excluded = set()
        tls = self.cluster_tls(NAMES)
        for i, name in enumerate(NAMES):
            a = self.net.addr(i)
            n = self.relayd(name=name, addr=a, port=2525, **tls[name],
                            cluster_listen="%s:7401" % a,
                            peers=peers, http_listen="%s:8025" % a, mynetworks=SUBNET,
                            dns_servers="%s:53" % HOST, lease="%dms" % (LEASE_S * 1000),
                            election_timeout="500ms", heartbeat_interval="50ms",
                            propose_timeout="5s", retry_base="1s", retry_max="2s",
                            max_connections_per_client="1000",
                            max_connections_per_destination="2")
            n.wrap = self.net.argv(i, [])
        for n in self.nodes:
            n.start()
        self.wait_live(3)

    # ---- helpers ----

    def txns(self):
        return sorted(self.fast.snap() + self.slow.snap())

    def live_count(self):
        best = 0
        for i, n in enumerate(self.nodes):
            if not n.alive():
                continue
            m = metrics(self.net.addr(i))
            if "relay_raft_is_leader 1" in m:
                best = sum(1 for name in NAMES if
                           'relay_ownership_member_state{node="%s",state="live"} 1' % name in m)
        return best

    def wait_live(self, k, timeout=60):
        wait_for(lambda: self.live_count() == k, timeout, "%d LIVE members" % k)

    def send(self, tag, count, start=0):
        """count messages over the three live nodes; returns {id: [rcpts]} of those accepted."""
        accepted = {}
        lock = threading.Lock()
        todo = list(range(start, start + count))

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    k = todo.pop()
                bid = "%s-%d" % (tag, k)
                rcpts = ["u%d@%s" % (k, DOMAINS[k % 30])]
                if k % 3 == 0:
                    rcpts.append("v%d@%s" % (k, DOMAINS[(k * 7 + 1) % 30]))
                msg = "X-Test-Id: %s\r\nSubject: %s\r\n\r\nbody %s\r\n" % (bid, bid, bid)
                for attempt in range(30):
                    i = (k + attempt) % 3
                    if not self.nodes[i].alive() or i in self.excluded:
                        continue
                    try:
                        with smtplib.SMTP(self.net.addr(i), 2525, timeout=15) as s:
                            s.sendmail("sender@client.test", rcpts, msg.encode())
                        with lock:
                            accepted[bid] = rcpts
                        break
                    except (OSError, smtplib.SMTPException):
                        time.sleep(0.1)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        return accepted, threads

    def delivered(self, accepted, since):
        """{(id, rcpt): [(mail time, data time, peer, queue id)]} for the accepted messages."""
        got = {}
        for mt, dt, peer, rcpts, bid, qid in self.txns():
            if bid in accepted and mt >= since:
                for r in rcpts:
                    got.setdefault((bid, r), []).append((mt, dt, peer, qid))
        return got

    def check_round(self, accepted, since, victim_addr, victim_gone_at, what):
        want = {(b, r) for b, rs in accepted.items() for r in rs}
        wait_for(lambda: want <= set(self.delivered(accepted, since)), 120,
                 "every accepted recipient delivered (%s)" % what)
        got = self.delivered(accepted, since)
        # A client whose node died after the commit but before the 250 sent the message again
        # (another queue id): that is the client's retry, not a relay duplicate.  Duplicates
        # are copies of one queue id and recipient.
        dups = {}
        for (bid, r), copies in got.items():
            byq = {}
            for c in copies:
                byq.setdefault(c[3], []).append(c)
            for qid, cs in byq.items():
                if len(cs) > 1:
                    dups[(bid, qid, r)] = cs
        for k, copies in dups.items():
            # Every extra copy is explained by an attempt the victim completed (DATA ended)
            # before it died or was cut off, whose outcome could not commit.
            by_victim = [c for c in copies if c[2] == victim_addr and c[1] <= victim_gone_at + 30]
            self.assertTrue(by_victim, "%s: %s delivered %d times, none by the victim: %s"
                            % (what, k, len(copies), copies))
        print("%s: %d recipients delivered, %d delivered twice (attempts the victim completed "
              "before its outcome could commit)" % (what, len(want), len(dups)), flush=True)
        return dups

    def top_deliverer(self, since, exclude=()):
        counts = {}
        for mt, dt, peer, rcpts, bid, qid in self.txns():
            if mt >= since and peer not in exclude:
                counts[peer] = counts.get(peer, 0) + 1
        return max(counts, key=counts.get) if counts else None

    # ---- the test ----

    def test_kill_then_cut_owner(self):
        # 1. SIGKILL an owner mid-run.
        t_start = time.monotonic()
        accepted, threads = self.send("a", 2000)
        wait_for(lambda: len(self.txns()) >= 300, 90, "300 deliveries")
        vaddr = self.top_deliverer(t_start)
        vi = self.net.addrs.index(vaddr)
        self.nodes[vi].kill()
        t_kill = time.monotonic()
        for t in threads:
            t.join(180)
        self.assertGreaterEqual(len(accepted), 1900, "most messages accepted")
        self.check_round(accepted, t_start, vaddr, t_kill, "kill %s" % NAMES[vi])
        # nothing from the dead node after its death, obviously; and others took its domains
        self.assertFalse([t for t in self.txns() if t[2] == vaddr and t[0] > t_kill])
        self.nodes[vi].start()
        self.wait_live(3)

        # 2. Cut an owner off: it stops starting attempts once its lease is gone.
        t2 = time.monotonic()
        accepted2, threads2 = self.send("b", 600, start=10000)
        # cut the node that is delivering most right now, mid-run
        wait_for(lambda: len([t for t in self.txns() if t[0] >= t2]) >= 60, 60,
                 "deliveries of round 2")
        caddr = self.top_deliverer(t2)
        ci = self.net.addrs.index(caddr)
        self.excluded.add(ci)  # clients stop submitting to it (it could not commit)
        self.net.cut(ci)
        t_cut = time.monotonic()
        for t in threads2:
            t.join(180)
        self.assertGreaterEqual(len(accepted2), 550, "most messages accepted")
        self.check_round(accepted2, t2, caddr, t_cut, "cut %s" % NAMES[ci])
        late = [t for t in self.txns() if t[2] == caddr and t[0] > t_cut + LEASE_S + 0.5]
        self.assertFalse(late, "the cut-off node started transactions after its lease: %s"
                         % late[:5])
        after = [t for t in self.txns() if t[2] == caddr and t[0] > t_cut]
        print("cut %s: %d transactions started by it after the cut, the last %.2f s after "
              "(lease %.1f s)" % (NAMES[ci], len(after),
                                  max((t[0] - t_cut for t in after), default=0), LEASE_S),
              flush=True)
        self.net.heal(ci)
        self.excluded.discard(ci)
        self.wait_live(3)


if __name__ == "__main__":
    unittest.main()
