"""test_cluster: three relayd nodes replicating their queue through Raft (issue 4, G1).

Nodes n1-n3 on 127.0.0.11-13 (SMTP 2525, cluster 7401, HTTP 8025), mutual TLS between nodes
(certificates per test from scripts/make-cluster-certs.sh, as deployed).
Delivery cannot succeed (dns_servers is a closed port, retry_base 1h), so every accepted message
stays queued and can be counted on every node with `relayd --dump-queue --json`.

- test_kill_leader_mid_stream: smtplib clients send 600+ messages spread over the three nodes;
  the leader is SIGKILLed mid-stream and restarted.  Every message that got 250 must be in the
  queue of all three nodes; a new leader is elected and accepts.  The peer transport's counters
  on /metrics (frames sent, taken, dropped by reason, queued per member: they grow for the
  killed node and drain after its restart) are there and pass promtool.
- test_wiped_node_rejoins: a follower loses its data dir; restarted empty, it catches up by
  snapshot.
"""
import re
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

from relaytest import RelayTestCase, wait_for

ADDRS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
NAMES = ["n1", "n2", "n3"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
QUEUED_RE = re.compile(r"queued as ([0-9A-Fa-f]+)")


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


class ClusterTest(RelayTestCase):
    def start_cluster(self, **keys):
        self.cl = []
        tls = self.cluster_tls(NAMES)
        for name, addr in zip(NAMES, ADDRS):
            n = self.relayd(name=name, addr=addr, port=2525,
                            cluster_listen="%s:7401" % addr, peers=PEERS,
                            http_listen="%s:8025" % addr,
                            election_timeout="500ms", heartbeat_interval="50ms",
                            propose_timeout="10s", retry_base="1h", retry_max="1h",
                            **tls[name], **keys)
            self.cl.append(n)
        for n in self.cl:
            n.start()
        self.wait_leader()

    def leader(self):
        """The index of the node that says it leads and that every live node follows."""
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

    def wait_leader(self, timeout=20):
        return wait_for(lambda: (lambda x: x + 1 if x is not None else None)(self.leader()),
                        timeout, "a leader") - 1

    def send_one(self, i, k):
        """One message to node i; the queue id on 250, None on a 4xx or a dead node."""
        try:
            with smtplib.SMTP(ADDRS[i], 2525, timeout=20) as s:
                s.ehlo("client.test")
                s.mail("sender%d@client.test" % k)
                code, _ = s.rcpt("rcpt%d@dest.test" % k)
                if code != 250:
                    return None
                body = ("Subject: m%d\r\n\r\n" % k) + ("x" * 1000 + "\r\n") * 4
                code, text = s.data(body.encode())
                if code != 250:
                    return None
                return QUEUED_RE.search(text.decode()).group(1)
        except (OSError, smtplib.SMTPException):
            return None

    def queues_hold(self, ids):
        """Every id is in the applied queue of every node (not merely in its log)."""
        for n in self.cl:
            try:
                q = n.dump_queue()
            except AssertionError as e:
                # a node fetching a streamed snapshot: its dump refuses the partial copy
                if "snapshot-incomplete" in str(e):
                    return False
                raise
            if any(i not in q or q[i].get("pending_apply") for i in ids):
                return False
        return True

    def test_kill_leader_mid_stream(self):
        self.start_cluster()
        lead = self.wait_leader()
        accepted = {}  # qid -> (node, time)
        lock = threading.Lock()
        stop = threading.Event()
        counter = iter(range(1, 10**6))
        kill_at = {"t": None}

        def client(c):
            i = c % 3
            while not stop.is_set():
                with lock:
                    k = next(counter)
                qid = self.send_one(i, k)
                if qid is None:
                    i = (i + 1) % 3  # that node is down or has no quorum: try the next
                    time.sleep(0.05)
                    continue
                with lock:
                    accepted[qid] = (i, time.monotonic())

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(6)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(accepted) >= 200, 60, "200 messages accepted")
            victim = self.cl[lead]
            victim.kill()
            kill_at["t"] = time.monotonic()
            new_lead = self.wait_leader(30)
            self.assertNotEqual(new_lead, lead)
            # frames for the dead node wait in the live nodes' transport queues
            key = 'relay_raft_peer_queued_frames{peer="%s"}' % NAMES[lead]
            wait_for(lambda: any((metrics(ADDRS[i]) or {}).get(key, 0) >= 1
                                 for i in range(3) if i != lead), 10,
                     "frames queued for the killed " + NAMES[lead])
            wait_for(lambda: sum(1 for _, t in accepted.values() if t > kill_at["t"]) >= 100,
                     60, "100 messages accepted after the kill")
            victim.start()
            wait_for(lambda: len(accepted) >= 650, 90, "650 messages accepted")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        after = sum(1 for _, t in accepted.values() if t > kill_at["t"])
        print("accepted=%d after_kill=%d by_node=%s" % (
            len(accepted), after, [sum(1 for n, _ in accepted.values() if n == i) for i in range(3)]))
        self.assertGreaterEqual(len(accepted), 600)
        ids = list(accepted)
        wait_for(lambda: self.queues_hold(ids), 60, "every accepted message on all three nodes",
                 interval=0.5)
        self.wait_leader()
        self.check_transport_metrics()

    def check_transport_metrics(self):
        """The peer transport's counters on /metrics: every node sent and took frames (the
        restarted one since its restart), none was dropped as undecodable or unauthenticated,
        and the text passes `promtool check metrics`."""
        for i, addr in enumerate(ADDRS):
            m = metrics(addr)
            self.assertIsNotNone(m, "node %d /metrics" % (i + 1))
            for k in ("relay_cluster_frames_sent_total", "relay_cluster_frames_received_total"):
                self.assertGreater(m.get(k, 0), 0, "node %d %s" % (i + 1, k))
            for reason in ("unauthenticated", "malformed"):
                k = 'relay_cluster_frames_dropped_total{reason="%s"}' % reason
                self.assertEqual(m.get(k), 0, "node %d %s" % (i + 1, k))
            for k in ('relay_cluster_frames_dropped_total{reason="queue_full"}',
                      "relay_cluster_write_errors_total", "relay_cluster_redials_total",
                      "relay_cluster_inbound_refused_total",
                      "relay_cluster_stranger_frames_total",
                      "relay_cluster_stale_connections_closed_total"):
                self.assertIn(k, m, "node %d" % (i + 1))
            # the killed leader's connections were cut mid-stream, none refused; each node
            # holds the inbound connections of the other two (an old one may be closing)
            self.assertIn("relay_cluster_handshake_failures_total", m)
            self.assertEqual(m.get("relay_cluster_inbound_refused_total"), 0)
            self.assertGreaterEqual(m.get("relay_cluster_inbound_connections", 0), 2,
                                    "node %d inbound connections" % (i + 1))
        # ... and the queues toward every member drain (a heartbeat may be on its way)
        def drained():
            for i, addr in enumerate(ADDRS):
                m = metrics(addr) or {}
                for j, name in enumerate(NAMES):
                    if j == i:
                        continue
                    q = m.get('relay_raft_peer_queued_frames{peer="%s"}' % name)
                    b = m.get('relay_raft_peer_queued_bytes{peer="%s"}' % name)
                    if q is None or b is None or q > 2:
                        return False
            return True
        wait_for(drained, 20, "the transport queues drained")
        with urllib.request.urlopen("http://%s:8025/metrics" % ADDRS[0], timeout=5) as r:
            text = r.read().decode()
        check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_wiped_node_rejoins(self):
        """A follower loses its data dir.  Raft assumes durable logs: the leader remembers
        how far the lost log went and probes from there, so the node is caught up by a
        snapshot once the leader has compacted past that point (snapshot_entries is small
        here; a cluster member that lost its disk rejoins by snapshot or after a leader
        change)."""
        import shutil
        self.start_cluster(snapshot_entries=40)
        lead = self.wait_leader()
        ids = [q for q in (self.send_one(k % 3, k) for k in range(30)) if q]
        self.assertEqual(len(ids), 30)
        wait_for(lambda: self.queues_hold(ids), 30, "30 messages everywhere", interval=0.3)
        f = (lead + 1) % 3
        self.cl[f].kill()
        shutil.rmtree(self.cl[f].data_dir)
        more = [q for q in (self.send_one(i, 100 + k) for k, i in
                            enumerate([lead, (lead + 2) % 3] * 50)) if q]
        self.assertEqual(len(more), 100)
        self.cl[f].start()
        wait_for(lambda: self.queues_hold(ids + more), 30, "the wiped node caught up",
                 interval=0.3)
        self.assertIn("event=snapshot-installed", self.cl[f].log())
        # and it accepts again itself
        q = self.send_one(f, 999)
        self.assertIsNotNone(q)
        wait_for(lambda: self.queues_hold([q]), 30, "its own message everywhere", interval=0.3)


if __name__ == "__main__":
    unittest.main()
