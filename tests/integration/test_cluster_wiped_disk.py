"""test_cluster_wiped_disk: a member whose disk is replaced never comes back as a voter with no
memory (issue 11, section 1; G1).

Three relayd (node1-node3 on 127.0.37.11-13: SMTP 2525, cluster 7401, HTTP 8025) over cluster
mutual TLS (scripts/make-cluster-certs.sh), as deployed.  Nothing is delivered (dns_servers is
a closed port, retry 1h), so every accepted message stays queued and the queues can be compared
with `relayd --dump-queue --json`.  Client threads send all the time, to every node (a node
that answers 4xx or is down: the next one).

The scenario (the issue's, tried on main: 169 of 200 acknowledged messages lost):
  1. leader L, followers F1 and F2; messages are accepted;
  2. F1 is SIGSTOPped (it lags); messages keep being accepted through L and F2 (250 means on
     L and F2 only);
  3. F2 is SIGKILLed, its data_dir wiped (a replaced disk); L is SIGKILLed;
  4. F2 restarts empty and F1 resumes (SIGCONT): F1 lacks what L and F2 acknowledged, F2 holds
     nothing.  They must NOT elect a leader between them (on main F2 came back as the same
     voter, empty, and voted for F1: the acknowledged messages were gone);
  5. L restarts: a leader is elected, the load goes on; F2 rejoins by itself as a new
     incarnation (its old Raft identity removed, the new one a learner, then a voter);
  6. every message that got 250 is in the queue of all three nodes, which converge, and each
     node stops cleanly (exit 0, no sanitizer report in its log).
"""
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

from relaytest import RelayTestCase, wait_for

ADDRS = ["127.0.37.11", "127.0.37.12", "127.0.37.13"]
NAMES = ["node1", "node2", "node3"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
RELAYCTL = os.environ.get("RELAYCTL", os.path.join(os.path.dirname(__file__),
                                                   "../../build/node/relayctl"))
QUEUED_RE = re.compile(r"queued as ([0-9A-Fa-f]+)")
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:")
# While L is down, F1 (lagging) and the wiped F2 are watched this long for a leader (there
# must be none; on main one came within an election timeout or two).
NO_LEADER_WATCH_S = 6.0


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


class WipedDiskTest(RelayTestCase):
    def status(self, i):
        """relayctl --json status against node i's admin port (mutual TLS), or None."""
        r = subprocess.run([RELAYCTL, "--server", "%s:7402" % ADDRS[i], "--timeout", "3s",
                            "--ca", os.path.join(self.certs, "ca.crt"),
                            "--cert", os.path.join(self.certs, "admin.crt"),
                            "--key", os.path.join(self.certs, "admin.key"), "--json", "status"],
                           capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None

    def incarnation_of(self, st, name):
        for m in st["members"]:
            if m["id"] == name:
                return m.get("incarnation")
        return None

    def setUp(self):
        super().setUp()
        certs = self.certs = os.path.join(self.tmp, "certs")
        subprocess.run(["bash", os.path.join(TOP, "scripts/make-cluster-certs.sh"), certs,
                        str(len(NAMES))], check=True, capture_output=True, timeout=60)
        self.cl = []
        for name, addr in zip(NAMES, ADDRS):
            n = self.relayd(name=name, addr=addr, port=2525,
                            cluster_listen="%s:7401" % addr, peers=PEERS,
                            http_listen="%s:8025" % addr, admin_listen="%s:7402" % addr,
                            admin_ca=os.path.join(certs, "admin-ca.crt"),
                            cluster_ca=os.path.join(certs, "ca.crt"),
                            cluster_cert=os.path.join(certs, name + ".crt"),
                            cluster_key=os.path.join(certs, name + ".key"),
                            election_timeout="500ms", heartbeat_interval="50ms",
                            propose_timeout="5s", retry_base="1h", retry_max="1h")
            self.cl.append(n)
        for n in self.cl:
            n.start()
        self.stopped = None

    def tearDown(self):
        if self.stopped is not None and self.stopped.alive():
            self.stopped.proc.send_signal(signal.SIGCONT)
        super().tearDown()

    def leader(self, among=range(3)):
        """The index of the node that says it leads and that every live node in `among`
        follows, else None."""
        lead = None
        for i in among:
            if not self.cl[i].alive():
                continue
            m = metrics(ADDRS[i])
            if m is None or m.get("relay_raft_has_leader") != 1:
                return None
            if m.get("relay_raft_is_leader") == 1:
                if lead is not None:
                    return None
                lead = i
        return lead

    def wait_leader(self, timeout=30, among=range(3)):
        return wait_for(lambda: (lambda x: x + 1 if x is not None else None)(
            self.leader(among)), timeout, "a leader") - 1

    def send_one(self, i, k):
        """One message to node i; the queue id on 250, None otherwise."""
        try:
            with smtplib.SMTP(ADDRS[i], 2525, timeout=15) as s:
                s.ehlo("client.test")
                s.mail("sender%d@client.test" % k)
                code, _ = s.rcpt("rcpt%d@dest.test" % k)
                if code != 250:
                    return None
                body = ("Subject: m%d\r\n\r\n" % k) + ("y" * 900 + "\r\n") * 2
                code, text = s.data(body.encode())
                if code != 250:
                    return None
                return QUEUED_RE.search(text.decode()).group(1)
        except (OSError, smtplib.SMTPException):
            return None

    def queues(self):
        """Each node's queue ids, or None when a node cannot be read yet."""
        out = []
        for n in self.cl:
            try:
                q = n.dump_queue()
            except AssertionError as e:
                if "snapshot-incomplete" in str(e):
                    return None
                raise
            out.append({i for i, m in q.items() if not m.get("pending_apply")})
        return out

    def test_wiped_follower_and_lagging_follower_lose_nothing(self):
        lead = self.wait_leader()
        f1, f2 = (lead + 1) % 3, (lead + 2) % 3
        accepted = {}  # qid -> (node, time)
        lock = threading.Lock()
        stop = threading.Event()
        counter = iter(range(1, 10**7))

        def client(c):
            i = c % 3
            while not stop.is_set():
                with lock:
                    k = next(counter)
                qid = self.send_one(i, k)
                if qid is None:
                    i = (i + 1) % 3
                    time.sleep(0.05)
                    continue
                with lock:
                    accepted[qid] = (i, time.monotonic())

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(6)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(accepted) >= 50, 60, "50 messages accepted")
            # 2. F1 lags
            self.cl[f1].proc.send_signal(signal.SIGSTOP)
            self.stopped = self.cl[f1]
            n0 = len(accepted)
            wait_for(lambda: len(accepted) >= n0 + 200, 90,
                     "200 messages accepted by L and F2 while F1 is stopped")
            # 3. F2's disk is replaced, L dies
            before = self.status(lead)
            self.assertIsNotNone(before, "relayctl status on the leader")
            inc_before = self.incarnation_of(before, NAMES[f2])
            self.assertRegex(inc_before or "", r"^[0-9a-f]{16}$")
            self.cl[f2].kill()
            shutil.rmtree(self.cl[f2].data_dir)
            self.cl[lead].kill()
            with lock:
                acked_before = set(accepted)
            # 4. F2 comes back empty, F1 resumes: they must not elect a leader
            self.cl[f2].start()
            self.cl[f1].proc.send_signal(signal.SIGCONT)
            self.stopped = None
            bad_leader = None
            deadline = time.monotonic() + NO_LEADER_WATCH_S
            while time.monotonic() < deadline and bad_leader is None:
                for i in (f1, f2):
                    m = metrics(ADDRS[i])
                    if m and m.get("relay_raft_is_leader") == 1:
                        bad_leader = NAMES[i]
                time.sleep(0.1)
            # 5. L comes back: a leader, and the load goes on
            self.cl[lead].start()
            self.wait_leader(60)
            n1 = len(accepted)
            wait_for(lambda: len(accepted) >= n1 + 100, 90, "100 messages after the restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        print("accepted=%d before_the_kills=%d" % (len(accepted), len(acked_before)))
        ids = set(accepted)

        def converged():
            q = self.queues()
            if q is None:
                return False
            missing = [len(ids - s) for s in q]
            return all(m == 0 for m in missing) and q[0] == q[1] == q[2]

        try:
            wait_for(converged, 120, "every accepted message on all three nodes, the same queues",
                     interval=1.0)
        except AssertionError:
            q = self.queues()
            if q is not None:
                print("missing per node:", [len(ids - s) for s in q],
                      "of those accepted before the kills:",
                      [len(acked_before - s) for s in q])
            raise
        self.assertIsNone(bad_leader, "%s became leader with only a lagging follower and a "
                          "wiped one" % bad_leader)
        self.wait_leader(60)
        # F2 rejoined by itself under a new incarnation
        self.assertIn("event=rejoin-ask", self.cl[f2].log())
        relog = "\n".join(n.log() for n in self.cl)
        self.assertIn("event=conf-change op=remove-replaced", relog)
        self.assertRegex(self.cl[f2].log(), r"event=rejoined incarnation=[0-9a-f]{16}")
        # relayctl status: a new incarnation for F2, a voter again; one cluster id everywhere
        after = [self.status(i) for i in range(3)]
        self.assertTrue(all(after))
        inc_after = self.incarnation_of(after[0], NAMES[f2])
        self.assertRegex(inc_after or "", r"^[0-9a-f]{16}$")
        self.assertNotEqual(inc_after, inc_before)
        self.assertEqual(len({st["cluster_id"] for st in after}), 1)
        self.assertEqual(before["cluster_id"], after[0]["cluster_id"])
        role = [m["role"] for m in after[0]["members"] if m["id"] == NAMES[f2]]
        self.assertIn(role[0] if role else "", ("leader", "follower"))
        # each node stops cleanly, and no node log holds a sanitizer report
        for n in self.cl:
            self.assertEqual(n.stop(), 0, "%s exit status" % n.name)
            self.assertIsNone(SANITIZER_RE.search(n.log()), "%s: sanitizer report" % n.name)


if __name__ == "__main__":
    unittest.main()
