"""auto_join (issue 14 part 7): `kubectl scale` from 3 to 5 and back, driven as the StatefulSet
would drive it, against real relayd processes (there is no Kubernetes here).

Nodes n1-n3 on 127.0.17.11-13 (SMTP 2525, cluster 7401, admin 7402) form the cluster from `peers`,
with mutual TLS between nodes as deployed (certificates from scripts/make-cluster-certs.sh, one CA).
n4 and n5 (127.0.17.14-15) are the pods a scale-up adds: the same config (peers = n1-n3, so they
are outside their own `peers`), their own certificate of the same CA, an empty data_dir.

- scale up: with auto_join = yes everywhere, n4 and n5 become voters with no relayctl command;
  they hold what was accepted before they came, and mail accepted through them commits;
- scale down: what deploy/'s preStop runs for a pod whose ordinal is >= replicas (`relayctl
  drain` then `relayctl node remove` of itself, against its own admin endpoint), highest first,
  then SIGTERM: back to three voters, and after every step a majority commits; then up again
  to four: the removed name comes back with an empty data_dir and joins again;
- auto_join off on the members: a node asking to join stays out (its frames are strangers'),
  and joins once `relayctl node add` names it;
- a certificate the cluster CA did not sign never gets a join request through.
Every wait has a deadline; every process started is stopped.
"""
import json
import os
import shutil
import smtplib
import subprocess
import time

from relaytest import RelayTestCase, wait_for, make_cluster_certs

RELAYCTL = os.environ.get("RELAYCTL", os.path.join(os.path.dirname(__file__),
                                                   "../../build/node/relayctl"))
NAMES = ["n1", "n2", "n3", "n4", "n5"]
ADDRS = {n: "127.0.17.%d" % (11 + i) for i, n in enumerate(NAMES)}
PEERS = ",".join("%s=%s:7401" % (n, ADDRS[n]) for n in NAMES[:3])


class AutoJoinTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.tls = self.cluster_tls(NAMES)
        self.ctl_tls = self.admin_tls_args()
        self.n = {}

    def node(self, name, auto_join=True, tls=None):
        a = ADDRS[name]
        n = self.relayd(name=name, addr=a, port=2525, cluster_listen="%s:7401" % a,
                        peers=PEERS, admin_listen="%s:7402" % a, auto_join="yes" if auto_join else "no",
                        election_timeout="500ms", heartbeat_interval="50ms",
                        propose_timeout="10s", retry_base="1h", retry_max="2h",
                        **(tls or self.tls[name]))
        self.n[name] = n
        return n

    def ctl(self, name, *args, timeout="5s"):
        r = subprocess.run([RELAYCTL, "--server", "%s:7402" % ADDRS[name], "--timeout", timeout,
                            *self.ctl_tls, *args], capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr

    def status(self, name):
        code, out, _ = self.ctl(name, "--json", "status", timeout="2s")
        return json.loads(out) if code == 0 and out.strip() else None

    def voters(self, name):
        st = self.status(name)
        if st is None:
            return None
        return sorted(m["id"] for m in st["members"] if m["membership"] == "voter")

    def wait_voters(self, names, timeout=30):
        want = sorted(names)
        for name in names:
            wait_for(lambda: self.voters(name) == want, timeout,
                     "%s to list voters %s" % (name, want), interval=0.1)

    def agreed_leader(self, names):
        leaders = set()
        for name in names:
            st = self.status(name)
            if st is None or not st["leader"]:
                return None
            leaders.add(st["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    def send(self, name, n):
        ids = []
        with smtplib.SMTP(ADDRS[name], 2525, timeout=15) as s:
            s.ehlo()
            for i in range(n):
                s.mail("s%d@client.test" % i)
                s.rcpt("r@far.example")
                code, text = s.data("Subject: %d\r\n\r\nbody\r\n" % i)
                self.assertEqual(code, 250, text)
                ids.append(text.decode().split("queued as ")[1].split()[0])
        return ids

    def has(self, name, qid):
        return self.ctl(name, "--json", "queue", "show", qid)[0] == 0

    def start_cluster(self, auto_join=True):
        for name in NAMES[:3]:
            self.node(name, auto_join).start()
        wait_for(lambda: self.agreed_leader(NAMES[:3]), 20, "an agreed leader")

    def test_scale_up_and_down(self):
        self.start_cluster()
        before = self.send("n1", 3)
        # scale up: two pods at once (podManagementPolicy: Parallel), no other command
        for name in ("n4", "n5"):
            self.node(name).start()
        self.wait_voters(NAMES, timeout=40)
        wait_for(lambda: self.agreed_leader(NAMES), 20, "one leader for five")
        for name in ("n4", "n5"):
            log = self.n[name].log()
            self.assertIn("event=rejoined", log)
        lead = self.agreed_leader(NAMES)
        self.assertIn("event=auto-join node=n4", self.n[lead].log() + "".join(
            self.n[x].log() for x in NAMES[:3]))
        after = self.send("n5", 2)  # through a new member
        for name in ("n4", "n5"):
            for q in before + after:
                wait_for(lambda: self.has(name, q), 15, "%s on %s" % (q, name), interval=0.1)
        # scale down to 3: the preStop of n5, then of n4 (highest ordinal first)
        members = list(NAMES)
        for name in ("n5", "n4"):
            code, _, err = self.ctl(name, "drain", name, timeout="60s")
            self.assertEqual(code, 0, err)
            code, _, err = self.ctl(name, "node", "remove", name, timeout="30s")
            self.assertEqual(code, 0, err)
            members.remove(name)
            self.wait_voters(members)
            self.assertEqual(self.n[name].stop(), 0)
            # a majority of what is left commits: mail accepted through each remaining node
            wait_for(lambda: self.agreed_leader(members), 20, "a leader among %s" % members)
            for m in members:
                self.send(m, 1)
        # and once their leases ran out, the removed nodes leave the member lists (Peer LEFT)
        for m in members:
            wait_for(lambda: sorted(x["id"] for x in self.status(m)["members"]) == NAMES[:3],
                     30, "n4 and n5 gone from %s's members" % m, interval=0.2)
        # scale up again: the StatefulSet deleted n4's PVC on the way down, so the pod starts
        # empty under the name that left, and joins again
        n4 = self.n["n4"]
        shutil.rmtree(n4.data_dir)
        n4.start()
        self.wait_voters(NAMES[:4], timeout=40)
        q = self.send("n4", 1)[0]
        for name in NAMES[:3]:
            wait_for(lambda: self.has(name, q), 15, "%s on %s" % (q, name), interval=0.1)

    def test_off_waits_for_node_add(self):
        self.start_cluster(auto_join=False)
        n4 = self.node("n4", auto_join=True)
        n4.start()
        # it asks (join-wait says so), the members drop a stranger's frames
        wait_for(lambda: "event=join-wait" in n4.log() and "auto_join=yes" in n4.log(), 20,
                 "n4 asking to join")
        t_end = time.monotonic() + 3.0  # > 2 request periods (2 x election_timeout each)
        while time.monotonic() < t_end:
            self.assertEqual(self.voters("n1"), NAMES[:3])
            self.assertNotIn("n4", [m["id"] for m in self.status("n1")["members"]])
            time.sleep(0.2)
        for name in NAMES[:3]:
            self.assertNotIn("event=auto-join", self.n[name].log())
        # the operator's way still works
        code, _, err = self.ctl("n1", "node", "add", "n4", "%s:7401" % ADDRS["n4"],
                                timeout="30s")
        self.assertEqual(code, 0, err)
        self.wait_voters(NAMES[:4])

    def test_foreign_ca_is_not_admitted(self):
        self.start_cluster()
        # n4's certificate is signed by another CA: its connections fail mutual TLS, so its
        # join requests never arrive
        other = make_cluster_certs(os.path.join(self.tmp, "other-ca"), ["n4"])["n4"]
        n4 = self.node("n4", tls=other)
        n4.start()
        wait_for(lambda: "event=join-wait" in n4.log(), 20, "n4 asking to join")
        t_end = time.monotonic() + 3.0  # > 2 request periods
        while time.monotonic() < t_end:
            self.assertEqual(self.voters("n1"), NAMES[:3])
            time.sleep(0.2)
        for name in NAMES[:3]:
            self.assertNotIn("event=auto-join", self.n[name].log())


if __name__ == "__main__":
    import unittest
    unittest.main()
