"""test_readyz_partition: /readyz turns 503 on a node cut off from the majority (issue 6).

Three relayd form a Raft cluster over mutual TLS (scripts/make-cluster-certs.sh), each in its
own network namespace (netns.py: prefix "rrdy", subnet 10.201.0.0/24, node I on 10.201.0.(11+I),
the test in the root namespace on 10.201.0.1 through the bridge).  A node is cut off with
iptables DROP inside its namespace (the test still reaches its HTTP endpoint):

- the leader cut off: it steps down (check-quorum) and its /readyz answers 503 within a
  deadline; the other two elect a leader between them and answer 200; healed, it follows again
  and answers 200.
- a follower cut off: its /readyz answers 503 within a deadline while the other two keep their
  leader and answer 200 the whole time; healed, it answers 200 again.
"""
import os
import time
import unittest
import urllib.error
import urllib.request

from netns import Netns
from relaytest import RelayTestCase, wait_for

PREFIX = "rrdy"
SUBNET = "10.201.0.0/24"
NAMES = ["node1", "node2", "node3"]
ELECTION = 0.5    # election_timeout in seconds (heartbeat 50 ms)
CUT_DEADLINE = 15  # seconds for a cut node to report 503, for the rest to have a leader
HEAL_DEADLINE = 30


def http(addr, path):
    """(status, body) of GET http://addr:8025/path; (None, error) when unreachable."""
    try:
        with urllib.request.urlopen("http://%s:8025%s" % (addr, path), timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def metric(addr, name):
    st, body = http(addr, "/metrics")
    if st != 200:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class ReadyzPartitionTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.fail("needs root (network namespaces)")
        self.net = Netns(PREFIX, len(NAMES), SUBNET)
        self.addCleanup(self.net.close)  # after tearDown has killed the nodes
        self.net.setup()
        tls = self.cluster_tls(NAMES)
        peers = ",".join("%s=%s:7401" % (n, self.net.addr(i)) for i, n in enumerate(NAMES))
        self.cl = []
        for i, name in enumerate(NAMES):
            a = self.net.addr(i)
            n = self.relayd(name=name, addr=a, port=2525, cluster_listen="%s:7401" % a,
                            peers=peers, http_listen="%s:8025" % a, **tls[name],
                            election_timeout="%dms" % (ELECTION * 1000),
                            heartbeat_interval="50ms", retry_base="1h", retry_max="1h")
            n.wrap = self.net.argv(i, [])
            self.cl.append(n)
        for n in self.cl:
            n.start()
        for i in range(len(NAMES)):
            wait_for(lambda: http(self.net.addr(i), "/readyz")[0] == 200, 60,
                     "%s /readyz 200 (cluster formed over TLS)" % NAMES[i], interval=0.1)

    def leaders(self, among):
        """Indexes in `among` whose relay_raft_is_leader is 1."""
        return [i for i in among if metric(self.net.addr(i), "relay_raft_is_leader") == 1]

    def one_leader(self, among):
        """The single leader among `among` that all of them report as known, else None."""
        lead = self.leaders(among)
        if len(lead) != 1:
            return None
        if any(metric(self.net.addr(i), "relay_raft_has_leader") != 1 for i in among):
            return None
        return lead[0] + 1  # truthy for wait_for

    def cut_and_heal(self, victim, expect_stable):
        rest = [i for i in range(len(NAMES)) if i != victim]
        va = self.net.addr(victim)
        t0 = time.monotonic()
        self.net.cut(victim)
        not_ready = []  # (node, status, body) of a majority node answering other than 200

        def sample_rest():
            for i in rest:
                st, body = http(self.net.addr(i), "/readyz")
                if st != 200:
                    not_ready.append((NAMES[i], st, body.strip()))

        try:
            # the cut node notices it lost the majority; when a follower was cut, the other
            # two must stay ready from the first moment on
            deadline = t0 + CUT_DEADLINE
            while http(va, "/readyz")[0] != 503:
                if expect_stable:
                    sample_rest()
                if time.monotonic() > deadline:
                    raise AssertionError("%s (cut off) still not 503 after %ds"
                                         % (NAMES[victim], CUT_DEADLINE))
                time.sleep(0.1)
            st, body = http(va, "/readyz")
            print("%s cut off: /readyz %s %r after %.1fs" % (NAMES[victim], st, body.strip(),
                                                             time.monotonic() - t0))
            self.assertIn("no leader", body)
            # the other two have (or elect) one leader and are ready
            new = wait_for(lambda: self.one_leader(rest), CUT_DEADLINE,
                           "a leader among %s" % [NAMES[i] for i in rest], interval=0.1) - 1
            for i in rest:
                wait_for(lambda: http(self.net.addr(i), "/readyz")[0] == 200, CUT_DEADLINE,
                         "%s /readyz 200 during the cut" % NAMES[i], interval=0.1)
            # hold the cut a few election timeouts: the majority stays ready, the cut node
            # stays 503
            end = time.monotonic() + 6 * ELECTION
            while time.monotonic() < end:
                sample_rest()
                self.assertEqual(http(va, "/readyz")[0], 503, "cut-off node became ready")
                time.sleep(0.05)
            self.assertEqual(not_ready, [], "majority not ready during the cut")
            self.assertEqual(self.leaders(rest), [new], "leader changed during the cut")
        finally:
            self.net.heal(victim)
        t1 = time.monotonic()
        wait_for(lambda: http(va, "/readyz")[0] == 200, HEAL_DEADLINE,
                 "%s /readyz 200 after heal" % NAMES[victim], interval=0.1)
        print("%s healed: /readyz 200 after %.1fs" % (NAMES[victim], time.monotonic() - t1))
        lead = wait_for(lambda: self.one_leader(range(len(NAMES))), HEAL_DEADLINE,
                        "one leader known to all three after heal", interval=0.1) - 1
        if expect_stable:
            self.assertEqual(lead, new, "healing a follower moved leadership")
        for i in range(len(NAMES)):
            self.assertEqual(http(self.net.addr(i), "/readyz")[0], 200)
        for n in self.cl:
            self.assertTrue(n.alive(), "%s died" % n.name)
        return lead

    def test_cut_leader_then_follower(self):
        lead = wait_for(lambda: self.one_leader(range(len(NAMES))), 20, "a leader") - 1
        # 1. the leader is cut off: it steps down, the other two elect a new one
        lead = self.cut_and_heal(lead, expect_stable=False)
        # 2. a follower is cut off: the leader and the other follower stay ready throughout
        follower = (lead + 1) % len(NAMES)
        self.cut_and_heal(follower, expect_stable=True)


if __name__ == "__main__":
    unittest.main()
