"""test_cluster_rolling_restart: each node restarted in turn while another is still fetching a
streamed snapshot of a queue over 200 MiB, under load (issue 11, section 2; G1).

Three relayd (node1-node3 on 127.0.38.11-13: SMTP 2525, cluster 7401, HTTP 8025) over cluster
mutual TLS (scripts/make-cluster-certs.sh), snapshot_entries 16, nothing delivered (retry 1h),
so every accepted message stays queued.  The queue is first filled with 52 messages of 4 MiB
(208 MiB), then client threads send small messages to every node all the time.

  1. follower F1 is SIGKILLed; once the leader L has compacted past what F1 applied, F1 is
     restarted: it installs a snapshot and starts fetching the 208 MiB queue;
  2. while F1 fetches, F2 is SIGKILLed and started again: meanwhile the leader must commit nothing
     (F1 holds no queue yet: it must not be counted; on main it acknowledged the descriptor at
     once and commits went on with the queue on the leader alone);
  3. while F1 (or F2) still fetches, L is SIGKILLed and restarted.
A sampler reads every node's /metrics every 50 ms: a node fetching a snapshot's data must
never be the leader (on main it voted and could be elected).  In the end every message that got 250 is in the
queue of all three nodes (the queues are equal and hold the 208 MiB of bodies), each node
stops cleanly (exit 0, no sanitizer report).
"""
import os
import re
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

from relaytest import RelayTestCase, port_open, wait_for

ADDRS = ["127.0.38.11", "127.0.38.12", "127.0.38.13"]
NAMES = ["node1", "node2", "node3"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
QUEUED_RE = re.compile(r"queued as ([0-9A-Fa-f]+)")
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:")
MIB = 1 << 20
BIG_N, BIG_SIZE = 52, 4 * MIB  # 208 MiB of queue
NO_LEADER_WATCH_S = 5.0
# A restarted node first syncs what its last run wrote unsynced (up to a partial copy of the
# queue): on a loaded machine that takes a while before it listens.
RESTART_S = 90


def metrics(addr):
    try:
        with urllib.request.urlopen("http://%s:8025/metrics" % addr, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def body_of(k, size):
    head = "Subject: m%d\r\nMessage-Id: <m%d@client.test>\r\n\r\n" % (k, k)
    line = ("%08d" % k) * 12 + "\r\n"  # 98 bytes
    return (head + line * (size // len(line))).encode()


class RollingRestartTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        certs = os.path.join(self.tmp, "certs")
        subprocess.run(["bash", os.path.join(TOP, "scripts/make-cluster-certs.sh"), certs,
                        str(len(NAMES))], check=True, capture_output=True, timeout=60)
        self.cl = []
        for name, addr in zip(NAMES, ADDRS):
            n = self.relayd(name=name, addr=addr, port=2525,
                            cluster_listen="%s:7401" % addr, peers=PEERS,
                            http_listen="%s:8025" % addr,
                            cluster_ca=os.path.join(certs, "ca.crt"),
                            cluster_cert=os.path.join(certs, name + ".crt"),
                            cluster_key=os.path.join(certs, name + ".key"),
                            election_timeout="400ms", heartbeat_interval="50ms",
                            propose_timeout="30s", snapshot_entries=16,
                            retry_base="1h", retry_max="1h")
            self.cl.append(n)
        for n in self.cl:
            n.start()

    def leader(self):
        lead = None
        for i, n in enumerate(self.cl):
            if not n.alive():
                continue
            m = metrics(ADDRS[i])
            if m is None or m.get("relay_raft_has_leader") != 1:
                return None
            if m.get("relay_raft_is_leader") == 1:
                if lead is not None:
                    return None
                lead = i
        return lead

    def wait_leader(self, timeout=60):
        return wait_for(lambda: (lambda x: x + 1 if x is not None else None)(self.leader()),
                        timeout, "a leader") - 1

    def metric(self, i, name, default=None):
        m = metrics(ADDRS[i]) if self.cl[i].alive() else None
        return m.get(name, default) if m else default

    def send(self, i, k, size):
        """One message of about size bytes to node i: its queue id on 250, else None."""
        try:
            with smtplib.SMTP(ADDRS[i], 2525, timeout=60) as s:
                s.ehlo("client.test")
                s.mail("sender%d@client.test" % k)
                code, _ = s.rcpt("rcpt%d@dest.test" % k)
                if code != 250:
                    return None
                code, text = s.data(body_of(k, size))
                if code != 250:
                    return None
                return QUEUED_RE.search(text.decode()).group(1)
        except (OSError, smtplib.SMTPException):
            return None

    def queues(self):
        out = []
        for n in self.cl:
            try:
                q = n.dump_queue()
            except AssertionError as e:
                if "snapshot-incomplete" in str(e):
                    return None
                raise
            out.append({i: m for i, m in q.items() if not m.get("pending_apply")})
        return out

    def restart_when_compacted_past(self, i, lead, timeout):
        """SIGKILLs node i; once the leader's snapshot index is past the end of i's log (it
        keeps its log for a member silent less than 10 election timeouts: then i needs a
        snapshot), or after timeout (the leader may be unable to commit), starts it again."""
        last = self.metric(i, "relay_raft_last_index", 0)
        self.cl[i].kill()
        try:
            wait_for(lambda: self.metric(lead, "relay_raft_snapshot_index", 0) > last + 1,
                     timeout, "the leader compacted past %s" % NAMES[i], interval=0.1)
        except AssertionError:
            pass
        self.cl[i].start(timeout=RESTART_S)

    def test_rolling_restart_while_fetching(self):
        t0 = time.monotonic()
        lead = self.wait_leader()
        # the queue: 208 MiB in 4 MiB messages, through every node
        big = {}
        lock = threading.Lock()
        nxt = iter(range(BIG_N * 4))

        def filler(w):
            while True:
                with lock:
                    if len(big) >= BIG_N:
                        return
                    k = next(nxt)
                qid = self.send(k % 3, k, BIG_SIZE)
                if qid is None:
                    time.sleep(0.5)  # a 4xx (it may still commit: then it is queued too)
                    continue
                with lock:
                    big[qid] = k

        fill = [threading.Thread(target=filler, args=(w,), daemon=True) for w in range(2)]
        for t in fill:
            t.start()
        for t in fill:
            t.join(300)
        self.assertGreaterEqual(len(big), BIG_N)
        print("filled %d MiB in %.1fs" % (BIG_N * BIG_SIZE >> 20, time.monotonic() - t0))

        accepted = dict((q, None) for q in big)
        stop = threading.Event()
        counter = iter(range(1000, 10**7))
        bad = []  # (node, what) seen by the sampler

        def client(c):
            i = c % 3
            while not stop.is_set():
                with lock:
                    k = next(counter)
                qid = self.send(i, k, 1500)
                if qid is None:
                    i = (i + 1) % 3
                    time.sleep(0.05)
                    continue
                with lock:
                    accepted[qid] = i

        def sampler():
            while not stop.is_set():
                for i in range(3):
                    m = self.metric(i, "relay_raft_snapshot_installing")
                    if m == 1 and self.metric(i, "relay_raft_is_leader") == 1:
                        bad.append((NAMES[i], "leader while fetching a snapshot's data"))
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(4)]
        threads.append(threading.Thread(target=sampler, daemon=True))
        for t in threads:
            t.start()
        f1, f2 = (lead + 1) % 3, (lead + 2) % 3
        fetching = lambda i: self.metric(i, "relay_raft_snapshot_installing") == 1
        try:
            wait_for(lambda: len(accepted) >= BIG_N + 50, 60, "the load running")
            # 1. F1 restarts behind the leader's compaction: it fetches the 208 MiB
            self.restart_when_compacted_past(f1, lead, 60)
            wait_for(lambda: fetching(f1), 60, "%s fetching the snapshot" % NAMES[f1],
                     interval=0.02)
            # 2. while F1 fetches, F2 restarts.  F1 holds no queue yet, so with F2 down the
            # leader must commit nothing (on main F1 acknowledged the descriptor at once and
            # was counted: commits went on with the queue on the leader alone)
            self.cl[f2].kill()
            # What F2 had acknowledged before it died may still commit, as late as the leader
            # handles those acks and its own log write (a loaded machine: hundreds of ms).  So
            # the commit index must stand still over the last second of the window while the
            # leader holds entries it has not committed: counting the fetching F1, it would
            # commit them at once.
            t_kill = time.monotonic()
            samples = []  # (seconds since the kill, commit index, last index)
            while time.monotonic() < t_kill + 2.0 and fetching(f1):
                c = self.metric(lead, "relay_raft_commit_index")
                li = self.metric(lead, "relay_raft_last_index")
                if c is not None and li is not None:
                    samples.append((time.monotonic() - t_kill, c, li))
                time.sleep(0.05)
            tail = [x for x in samples if x[0] >= 1.0]
            if len(tail) > 1 and tail[-1][1] > tail[0][1]:
                bad.append((NAMES[lead], "committed %d entries with only a fetching follower"
                            % (tail[-1][1] - tail[0][1])))
            if samples:
                print("after F2's kill: commit %d -> %d, last index %d at %.1fs"
                      % (samples[0][1], samples[-1][1], samples[-1][2], samples[-1][0]))
            self.assertTrue(fetching(f1), "the fetch ended too early")
            self.cl[f2].start(wait=False)  # (opening a big store takes seconds)
            # 3. while F1 still fetches, the leader restarts: the others may elect a leader
            # only once one of them holds the queue
            self.cl[lead].kill()
            deadline = time.monotonic() + NO_LEADER_WATCH_S
            while time.monotonic() < deadline and (fetching(f1) or fetching(f2)):
                time.sleep(0.1)
            self.cl[lead].start(wait=False)
            for n in (self.cl[f2], self.cl[lead]):
                wait_for(lambda: not n.alive() or port_open(n.addr, n.port), RESTART_S,
                         "%s listening again" % n.name)
                self.assertTrue(n.alive(), "%s exited:\n%s" % (n.name, n.log()[-3000:]))
            self.wait_leader(90)
            n1 = len(accepted)
            wait_for(lambda: len(accepted) >= n1 + 50, 90, "50 messages after the restarts")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        print("accepted=%d after %.1fs" % (len(accepted), time.monotonic() - t0))
        ids = set(accepted)

        def converged():
            q = self.queues()
            if q is None:
                return False
            return all(not (ids - set(s)) for s in q) and set(q[0]) == set(q[1]) == set(q[2])

        try:
            wait_for(converged, 150, "every accepted message on all three nodes", interval=1.0)
        except AssertionError:
            q = self.queues()
            if q is not None:
                print("missing per node:", [len(ids - set(s)) for s in q],
                      "big ones missing:", [len(set(big) - set(s)) for s in q])
            raise
        self.assertEqual(bad, [], "a node fetching a snapshot led the cluster")
        q = self.queues()
        for s in q:
            self.assertGreaterEqual(sum(s[b]["size"] for b in big), BIG_N * BIG_SIZE)
        self.assertIn("event=snapshot-installed", self.cl[f1].log())
        for n in self.cl:
            self.assertEqual(n.stop(), 0, "%s exit status" % n.name)
            self.assertIsNone(SANITIZER_RE.search(n.log()), "%s: sanitizer report" % n.name)
        print("done in %.1fs" % (time.monotonic() - t0))


if __name__ == "__main__":
    unittest.main()
