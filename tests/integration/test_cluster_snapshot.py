"""test_cluster_snapshot: streamed snapshots of a queue over 64 MiB, and big messages in a
cluster (issue 4).

Nodes n1-n3 on 127.0.16.11-13 (SMTP 2525, cluster 7401, HTTP 8025), mutual TLS between nodes
(certificates per test from scripts/make-cluster-certs.sh, as deployed), snapshot_entries 16.  Everything is relayed through `relayhost = [127.0.16.99]:25`, where
nothing listens: every delivery defers (retry_base 1h), so every accepted message stays queued
and the queues can be compared with `relayd --dump-queue --json`.

- test_big_queue_streamed_to_wiped_node: ~108 MiB of mail (80 x 1 MiB, 4 x 5 MiB and one
  8 MiB message accepted through a follower, which gets 250 and ends on every node); a follower
  loses its data dir and is restarted: the leader's log is compacted past it, so it installs a
  snapshot and streams the queue.  It is SIGKILLed in the middle of the install (its offline
  dump then refuses the partial copy), restarted, and ends with exactly the leader's queue ids.
"""
import shutil
import smtplib
import subprocess
import threading
import time
import unittest
import urllib.request

from relaytest import RELAYD, RelayTestCase, wait_for

ADDRS = ["127.0.16.11", "127.0.16.12", "127.0.16.13"]
NAMES = ["n1", "n2", "n3"]
PEERS = ",".join("%s=%s:7401" % (n, a) for n, a in zip(NAMES, ADDRS))
MIB = 1 << 20


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
    """A message of about size bytes, different for each k, in 998-byte lines."""
    head = "Subject: m%d\r\nMessage-Id: <m%d@client.test>\r\n\r\n" % (k, k)
    line = ("%08d" % k) * 12 + "\r\n"  # 98 bytes
    return (head + line * (size // len(line))).encode()


class ClusterSnapshotTest(RelayTestCase):
    def start_cluster(self):
        self.cl = []
        tls = self.cluster_tls(NAMES)
        for name, addr in zip(NAMES, ADDRS):
            n = self.relayd(name=name, addr=addr, port=2525, **tls[name],
                            cluster_listen="%s:7401" % addr, peers=PEERS,
                            http_listen="%s:8025" % addr,
                            election_timeout="500ms", heartbeat_interval="50ms",
                            propose_timeout="30s", retry_base="1h", retry_max="1h",
                            relayhost="[127.0.16.99]:25", snapshot_entries=16,
                            max_message_size="10m", data_timeout="60s")
            self.cl.append(n)
        for n in self.cl:
            n.start()
        return self.wait_leader()

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

    def wait_leader(self, timeout=20):
        return wait_for(lambda: (lambda x: x + 1 if x is not None else None)(self.leader()),
                        timeout, "a leader") - 1

    def send(self, i, k, size):
        """One message of about size bytes to node i: its queue id (asserts a 250)."""
        with smtplib.SMTP(ADDRS[i], 2525, timeout=60) as s:
            s.ehlo("client.test")
            s.mail("sender%d@client.test" % k)
            code, _ = s.rcpt("rcpt%d@dest.test" % k)
            self.assertEqual(code, 250)
            code, text = s.data(body_of(k, size))
            self.assertEqual(code, 250, text)
            return text.decode().rsplit(" ", 1)[-1]

    def send_many(self, jobs):
        """jobs: (node, k, size); sent by 4 client threads.  Returns the queue ids."""
        ids, errors, lock = [], [], threading.Lock()
        it = iter(jobs)

        def worker():
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                try:
                    q = self.send(*job)
                    with lock:
                        ids.append(q)
                except Exception as e:  # noqa: BLE001 - reported below
                    with lock:
                        errors.append("%r: %s" % (job, e))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        return ids

    def queues_hold(self, ids, nodes):
        for n in nodes:
            try:
                q = n.dump_queue()
            except AssertionError as e:
                # a node installing a streamed snapshot says so: not there yet
                if "snapshot-incomplete" in str(e):
                    return False
                raise
            if any(i not in q or q[i].get("pending_apply") for i in ids):
                return False
        return True

    def test_big_queue_streamed_to_wiped_node(self):
        t0 = time.monotonic()
        lead = self.start_cluster()
        f = (lead + 1) % 3
        other = (lead + 2) % 3
        # the 8 MiB message through a follower
        big = self.send(other, 0, 8 * MIB)
        jobs = [((lead, other)[k % 2], k, MIB) for k in range(1, 81)]
        jobs += [(lead, 100 + k, 5 * MIB) for k in range(4)]
        ids = [big] + self.send_many(jobs)
        self.assertEqual(len(ids), 85)
        wait_for(lambda: self.queues_hold(ids, self.cl), 60, "85 messages on every node",
                 interval=0.5)
        for n in self.cl:
            q = n.dump_queue()
            self.assertGreaterEqual(q[big]["size"], 8 * MIB)
        print("filled in %.1fs" % (time.monotonic() - t0))

        # a follower loses its disk; the others go on and compact past where its log ended
        self.cl[f].kill()
        shutil.rmtree(self.cl[f].data_dir)
        more = [self.send((lead, other)[k % 2], 200 + k, 2000) for k in range(40)]
        ids += more
        snap_before = metrics(ADDRS[lead])["relay_raft_snapshot_index"]
        wait_for(lambda: metrics(ADDRS[lead])["relay_raft_snapshots_total"] >= 2, 30,
                 "the leader compacted")
        self.assertGreater(snap_before, 0)

        # restarted empty, it installs a snapshot and streams >64 MiB; SIGKILL it mid-install
        # (seen as the marker its offline dump refuses); a fast fetch may finish first: then
        # wipe and try again, killing sooner
        killed_mid_install = False
        for delay in (0.3, 0.1, 0.0, 0.0):
            seen = self.cl[f].log().count("event=snapshot-fetch")
            self.cl[f].start()
            wait_for(lambda: self.cl[f].log().count("event=snapshot-fetch") > seen, 30,
                     "the wiped node to start fetching a snapshot", interval=0.01)
            time.sleep(delay)
            self.cl[f].kill()
            r = subprocess.run([RELAYD, "--config", self.cl[f].conf_path, "--dump-queue",
                                "--json"], capture_output=True, timeout=60)
            if r.returncode != 0:
                self.assertIn(b"snapshot-incomplete", r.stderr)
                killed_mid_install = True
                break
            shutil.rmtree(self.cl[f].data_dir)
        self.assertTrue(killed_mid_install, "never caught the node mid-install")

        # restarted as it is: it wipes the partial copy and fetches again
        self.cl[f].start()
        wait_for(lambda: "event=snapshot-resume" in self.cl[f].log(), 10, "the resume")
        wait_for(lambda: (lambda m: m and m.get("relay_raft_snapshots_installed_total", 0) >= 1
                          and m.get("relay_raft_snapshot_installing") == 0)(metrics(ADDRS[f])),
                 60, "the install to complete", interval=0.1)
        m = metrics(ADDRS[f])
        self.assertGreater(m["relay_raft_snapshot_fetch_bytes_total"], 64 * MIB)
        # caught up: then stop it and compare its queue offline with the leader's
        wait_for(lambda: self.queues_hold(ids, [self.cl[f]]), 60,
                 "every message on the restored node", interval=0.5)
        self.assertEqual(self.cl[f].stop(), 0)
        mine = self.cl[f].dump_queue()
        theirs = self.cl[lead].dump_queue()
        self.assertEqual(sorted(mine), sorted(theirs))
        self.assertEqual(len(mine), 125)
        self.assertGreaterEqual(mine[big]["size"], 8 * MIB)
        print("done in %.1fs" % (time.monotonic() - t0))


if __name__ == "__main__":
    unittest.main()
