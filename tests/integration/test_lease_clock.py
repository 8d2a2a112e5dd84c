"""test_lease_clock: leases on a clock that cannot jump, bounded by the whole attempt, and the
deadlines of outgoing SMTP (issue 11 section 3, issue 12 section 3 outgoing side).

Everything on 127.0.47.x (this module only): three relayd (.1-.3, cluster on :7401, HTTP on
:8025, admin on :7402), a single relayd (.5), dnsmasq (.53), an aiosmtpd destination (.20) that
notes every transaction (the time of MAIL and of the end of DATA, the client's EHLO name, the
recipients) and holds each RCPT reply `hold` seconds so attempts stay in flight, and two hostile
destinations from scripted_server.py (.21 trickles every reply one byte a second, .22 never
answers the TLS handshake after STARTTLS).

- test_wall_clock_steps: the three nodes run under libfaketime (Debian `faketime`) with a
  timestamp file each (FAKETIME_TIMESTAMP_FILE, re-read every second) and
  FAKETIME_DONT_FAKE_MONOTONIC=1: their wall clock (CLOCK_REALTIME, gettimeofday) can be stepped
  at run time, their monotonic clocks are left alone, exactly what an NTP step does.  While
  deliveries are in flight the leader's wall clock steps 30 s forward and a follower's 30 s back
  (checked through the Renew at_ms each node records).  No recipient may be in two delivered
  transactions at once, every accepted recipient must be delivered, and no lease may lapse.
  On a relayd whose leases ran on the wall clock the follower stopped renewing for 30 s while
  believing its lease held, and the leader declared everyone's lease lapsed at once: attempts in
  flight went on while the new owners started the same recipients.
- test_owner_stopped_before_end_of_data: the owner of a domain is SIGSTOPped while its
  transaction waits for the destination (before the body), until the leader has given the
  domain to another node and that node's transaction is open; then SIGCONT.  The old owner must
  not send the end of data (its lease lapsed during the stop: event=commit-refused), so again no
  recipient is in two delivered transactions, and nothing is lost.
- test_hostile_destinations: one node, max_deliveries = 1, delivery_attempt_timeout = 3s.  A
  destination trickling its greeting a byte a second and one that stalls the TLS handshake are
  each cut after the attempt's deadline (partial replies extend nothing; the handshake has a
  deadline at all) and their recipients deferred; a message to a good destination queued behind
  them gets the slot and is delivered.  (The per-phase RFC 5321 values, minutes long, are shown
  with simulated time in tests/unit/delivery/test_mta_session.c.)
"""
import asyncio
import glob
import json
import os
import re
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
import urllib.request

from relaytest import RelayTestCase, wait_for
from dsttest import Dnsmasq
from scripted_server import ScriptedServer

NET = "127.0.47."
DNS = NET + "53"
DEST = NET + "20"
TRICKLE = NET + "21"
STALLTLS = NET + "22"
SINGLE = NET + "5"
ADDRS = [NET + "1", NET + "2", NET + "3"]
NAMES = ["c1", "c2", "c3"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
DOMAINS = ["d%d.lease.test" % k for k in range(12)]
RELAYCTL = os.environ.get("RELAYCTL", os.path.join(os.path.dirname(__file__),
                                                   "../../build/node/relayctl"))


def libfaketime():
    """The multi-threaded libfaketime of the Debian package (scripts/setup.sh installs it)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise AssertionError("libfaketime is not installed (Debian package faketime; "
                             "run scripts/setup.sh)")
    return found[0]


class Dest:
    """aiosmtpd in this process: notes (mail time, end-of-data time, EHLO name, rcpts, test id)
    of every delivered transaction and holds each RCPT reply `hold` seconds."""

    def __init__(self, addr, hold):
        from aiosmtpd.controller import Controller
        self.lock = threading.Lock()
        self.txns = []
        self.mails = []   # (time, EHLO name) of every MAIL, delivered or not
        self.rcpts = []   # (time, EHLO name, address) of every RCPT, delivered or not
        self.hold = hold
        dest = self

        class H:
            async def handle_MAIL(self, server, session, envelope, address, mail_options):
                envelope.mail_from = address
                envelope.mail_time = time.monotonic()
                with dest.lock:
                    dest.mails.append((envelope.mail_time, session.host_name))
                return "250 2.1.0 Ok"

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                with dest.lock:
                    dest.rcpts.append((time.monotonic(), session.host_name, address))
                if dest.hold:
                    await asyncio.sleep(dest.hold)
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 Ok"

            async def handle_DATA(self, server, session, envelope):
                bid = None
                for line in envelope.original_content.split(b"\r\n"):
                    if line.startswith(b"X-Test-Id: "):
                        bid = line[11:].decode()
                    if line == b"":
                        break
                with dest.lock:
                    dest.txns.append((envelope.mail_time, time.monotonic(), session.host_name,
                                      list(envelope.rcpt_tos), bid))
                return "250 2.0.0 Ok"

        self.ctl = Controller(H(), hostname=addr, port=25, ready_timeout=10,
                              decode_data=False)

    def snap(self):
        with self.lock:
            return list(self.txns)

    def mails_from(self, ehlo, since=0.0):
        with self.lock:
            return [t for t, h in self.mails if h == ehlo and t >= since]

    def rcpts_from(self, ehlo, since=0.0):
        with self.lock:
            return {a for t, h, a in self.rcpts if h == ehlo and t >= since}


def metrics(addr):
    try:
        with urllib.request.urlopen("http://%s:8025/metrics" % addr, timeout=1) as r:
            return r.read().decode()
    except OSError:
        return ""


def status(addr):
    r = subprocess.run([RELAYCTL, "--server", "%s:7402" % addr, "--timeout", "2s", "--json",
                        "status"], capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


class LeaseClockTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.dns = Dnsmasq(self.tmp, DNS,
                           mx=[(d, "mx.lease.test", 10) for d in DOMAINS] +
                              [("trickle.test", "mx.trickle.test", 10),
                               ("stalltls.test", "mx.stalltls.test", 10),
                               ("good.test", "mx.lease.test", 10)],
                           a=[("mx.lease.test", DEST), ("mx.trickle.test", TRICKLE),
                              ("mx.stalltls.test", STALLTLS)],
                           local=("test",)).start()
        self.addCleanup(self.dns.stop)
        self.dest = Dest(DEST, 0)
        self.dest.ctl.start()
        self.addCleanup(self.dest.ctl.stop)

    def tearDown(self):
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                try:
                    os.kill(n.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
        super().tearDown()

    # ---- helpers ----

    def stop_all(self):
        """Every node stops cleanly on SIGTERM (exit 0; under ASan: no leak) and no log holds a
        sanitizer report."""
        for n in self.nodes:
            self.assertTrue(n.alive(), "%s died:\n%s" % (n.name, n.log()[-3000:]))
        for n in self.nodes:
            self.assertEqual(n.stop(), 0, "%s exit:\n%s" % (n.name, n.log()[-3000:]))
            for bad in ("Sanitizer", "runtime error:"):
                self.assertNotIn(bad, n.log(), n.name)

    def cluster(self, faketime, lease):
        """Three nodes; with faketime, each under libfaketime with its own timestamp file."""
        self.clock_files = []
        for name, addr in zip(NAMES, ADDRS):
            n = self.relayd(name=name, addr=addr, port=2525, cluster_listen="%s:7401" % addr,
                            peers=PEERS, http_listen="%s:8025" % addr,
                            admin_listen="%s:7402" % addr, dns_servers="%s:53" % DNS,
                            lease=lease, election_timeout="500ms", heartbeat_interval="50ms",
                            propose_timeout="10s", retry_base="2s", retry_max="4s",
                            max_connections_per_destination="2", log_level="info")
            if faketime:
                path = os.path.join(self.tmp, name + ".faketime")
                with open(path, "w") as f:
                    f.write("+0\n")
                env = dict(os.environ)
                env.pop("FAKETIME", None)   # it would win over the file
                env.update({"LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": path,
                            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
                # an ASan build wants its runtime first; libfaketime only wraps time calls
                env["ASAN_OPTIONS"] = ":".join(
                    x for x in (env.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0") if x)
                n.env = env
                self.clock_files.append(path)
        for n in self.nodes:
            n.start()
        wait_for(lambda: self.live_count() == 3, 60, "3 LIVE members")

    def live_count(self):
        for a in ADDRS:
            m = metrics(a)
            if "relay_raft_is_leader 1" in m:
                return sum(1 for name in NAMES if
                           'relay_ownership_member_state{node="%s",state="live"} 1' % name in m)
        return 0

    def leader(self):
        for i, a in enumerate(ADDRS):
            if "relay_raft_is_leader 1" in metrics(a):
                return i
        return None

    def step(self, i, offset):
        with open(self.clock_files[i], "w") as f:
            f.write(offset + "\n")

    def send(self, via, count, tag, domains=DOMAINS):
        """count messages through node `via`; returns {test id: [rcpts]} (all must be taken)."""
        accepted = {}
        with smtplib.SMTP(ADDRS[via], 2525, timeout=30) as s:
            for k in range(count):
                bid = "%s-%d" % (tag, k)
                rcpts = ["u%d@%s" % (k, domains[k % len(domains)])]
                msg = "X-Test-Id: %s\r\nSubject: %s\r\n\r\nbody %s\r\n" % (bid, bid, bid)
                s.sendmail("sender@client.test", rcpts, msg.encode())
                accepted[bid] = rcpts
        return accepted

    def delivered(self, accepted):
        got = {}
        for mt, dt, ehlo, rcpts, bid in self.dest.snap():
            if bid in accepted:
                for r in rcpts:
                    got.setdefault((bid, r), []).append((mt, dt, ehlo))
        return got

    def check_no_overlap_nothing_lost(self, accepted, timeout, what):
        want = {(b, r) for b, rs in accepted.items() for r in rs}
        wait_for(lambda: want <= set(self.delivered(accepted)), timeout,
                 "every accepted recipient delivered (%s)" % what, interval=0.2)
        got = self.delivered(accepted)
        overlaps, dups = [], 0
        for key, copies in got.items():
            copies.sort()
            dups += len(copies) - 1
            for a, b in zip(copies, copies[1:]):
                if b[0] < a[1]:   # the later one started before the earlier one ended
                    overlaps.append((key, a, b))
        self.assertFalse(overlaps, "%s: recipients in two delivered transactions at once: %s"
                         % (what, overlaps[:5]))
        print("%s: %d recipients delivered, %d extra copies (none concurrent)"
              % (what, len(want), dups), flush=True)

    # ---- the tests ----

    def test_wall_clock_steps(self):
        self.cluster(faketime=True, lease="5s")
        li = self.leader()
        self.assertIsNotNone(li)
        fi = (li + 1) % 3          # a follower whose clock goes back
        via = (li + 2) % 3         # the messages enter through the third node
        self.dest.hold = 4.0       # every attempt stays in flight 4 s before its body
        accepted = self.send(via, 96, "w")
        names = ["%s.relay.test" % n for n in NAMES]
        # both the leader and the follower have attempts in flight
        wait_for(lambda: self.dest.mails_from(names[li]) and self.dest.mails_from(names[fi]),
                 60, "attempts of the leader and of the follower")
        lapsed_before = self.nodes[li].log().count("event=lease-lapsed")
        self.step(li, "+30")
        self.step(fi, "-30")

        # The steps took.  libfaketime reads the files (a process under the same environment
        # sees them) ...
        for i, want in ((li, 30), (fi, -30)):
            def off(i=i):
                r = subprocess.run(["date", "+%s"], env=self.nodes[i].env, capture_output=True,
                                   text=True, timeout=10)
                return int(r.stdout) - time.time()
            wait_for(lambda: abs(off() - want) < 5, 10, "date under %s's clock" % NAMES[i])
        # ... and so do the nodes: each Renew carries its proposer's wall clock (at_ms); the
        # third node, on true time, sees the leader's renewals 30 s ahead and the follower's
        # 30 s behind (or older: a follower that stopped renewing).
        def stepped():
            st = status(ADDRS[via])
            if not st:
                return False
            age = {m["id"]: (m.get("ownership") or {}).get("renew_age_ms") for m in st["members"]}
            a_f, a_l = age.get(NAMES[fi]), age.get(NAMES[li])
            return a_f is not None and a_l is not None and a_f > 25000 and a_l < -25000
        wait_for(stepped, 40, "the wall clocks stepped (renew ages)", interval=0.2)

        # the follower's wall clock is 30 s behind: what it owns is due 30 s late by its clock
        self.check_no_overlap_nothing_lost(accepted, 150, "wall clocks stepped")
        lapsed = self.nodes[li].log().count("event=lease-lapsed") - lapsed_before
        self.assertEqual(lapsed, 0, "the leader declared leases lapsed after the steps")
        print("no lease lapsed, no ownership moved after the steps", flush=True)
        self.stop_all()

    def test_owner_stopped_before_end_of_data(self):
        self.cluster(faketime=False, lease="2s")
        li = self.leader()
        self.assertIsNotNone(li)
        self.dest.hold = 2.5
        names = ["%s.relay.test" % n for n in NAMES]
        # one message per domain: every node owns some of them
        t0 = time.monotonic()
        accepted = self.send(li, len(DOMAINS), "s")
        # a follower's transaction has started (MAIL seen; the RCPT reply is held): stop it
        owner = wait_for(lambda: next((i for i in range(3) if i != li and
                                       self.dest.mails_from(names[i], t0)), None),
                         30, "a transaction of a follower")
        victim = self.nodes[owner]
        os.kill(victim.proc.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        # what it had in flight (its RCPT replies are held: they come in at once)
        time.sleep(0.2)  # not for correctness: lets the pipelined RCPTs reach the destination
        stuck = self.dest.rcpts_from(names[owner], t0)
        self.assertTrue(stuck)
        # Another node takes the domain once the lease lapsed and starts its own transaction
        # for a recipient the stopped owner has in flight.
        others = [names[i] for i in range(3) if i != owner]
        wait_for(lambda: any(self.dest.rcpts_from(o, t_stop) & stuck for o in others), 30,
                 "another node's transaction for the stopped owner's recipients",
                 interval=0.05)
        os.kill(victim.proc.pid, signal.SIGCONT)
        t_cont = time.monotonic()
        self.check_no_overlap_nothing_lost(accepted, 60, "owner stopped %.1f s"
                                           % (t_cont - t_stop))
        # the resumed owner had the body ready and did not send its end
        wait_for(lambda: "event=commit-refused" in victim.log(), 10,
                 "the stopped owner refusing its end of data")
        late = [t for t in self.dest.snap() if t[2] == names[owner] and t[1] > t_stop]
        self.assertFalse(late, "the stopped owner completed transactions after its lease: %s"
                         % late)
        self.stop_all()

    def test_hostile_destinations(self):
        trickle = ScriptedServer(TRICKLE, mode="trickle", delay=1.0, name="trickle.test").start()
        self.addCleanup(trickle.stop)
        stall = ScriptedServer(STALLTLS, mode="stalltls", name="stalltls.test").start()
        self.addCleanup(stall.stop)
        n = self.relayd(name="h1", addr=SINGLE, port=2525, http_listen="%s:8025" % SINGLE,
                        dns_servers="%s:53" % DNS, max_deliveries="1",
                        delivery_attempt_timeout="3s", retry_base="1h", retry_max="2h")
        n.start()
        t0 = time.monotonic()
        with smtplib.SMTP(SINGLE, 2525, timeout=30) as s:
            s.sendmail("s@client.test", ["a@trickle.test"], b"Subject: 1\r\n\r\none\r\n")
            s.sendmail("s@client.test", ["b@stalltls.test"], b"Subject: 2\r\n\r\ntwo\r\n")
            s.sendmail("s@client.test", ["c@good.test"], b"X-Test-Id: g\r\nSubject: 3\r\n\r\n3\r\n")
        # one slot: the two hostile ones cannot hold it beyond the deadline
        wait_for(lambda: self.delivered({"g": ["c@good.test"]}), 40,
                 "the good destination delivered behind the hostile ones")
        elapsed = time.monotonic() - t0
        log = wait_for(lambda: (lambda l: l if "to=<a@trickle.test>" in l and
                                "to=<b@stalltls.test>" in l else None)(n.log()), 20,
                       "both hostile recipients deferred")
        a = re.search(r"to=<a@trickle\.test> .*", log).group(0)
        b = re.search(r"to=<b@stalltls\.test> .*", log).group(0)
        self.assertIn("status=deferred", a)
        self.assertIn("delivery_attempt_timeout reached (greeting)", a)
        self.assertIn("status=deferred", b)
        self.assertIn("delivery_attempt_timeout reached (tls-wait)", b)
        # (the metrics page is published periodically: wait for it)
        wait_for(lambda: 'relay_delivery_timeouts_total{deadline="attempt"} 2' in
                 metrics(SINGLE), 10, "two attempt timeouts in the metrics")
        print("hostile: both cut and deferred, the good one delivered %.1f s after submission"
              % elapsed, flush=True)
        self.stop_all()


if __name__ == "__main__":
    import unittest
    unittest.main()
