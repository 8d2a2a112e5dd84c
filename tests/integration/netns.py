"""netns: a few nodes in Linux network namespaces on one bridge, for partition tests.

    with Netns("rrdy", 3, "10.201.0.0/24") as net:
        p = net.popen(0, ["relayd", "--config", conf])     # runs inside namespace 0
        net.addr(0)                                        # "10.201.0.11"
        net.cut(0)                                         # node 0 no longer reaches 1 and 2
        net.heal(0)

Layout (every name starts with the per-test prefix, so parallel tests never collide):

    root namespace:  bridge PREFIX-br, address .1 of the subnet (the test reaches every node
                     from the root namespace through it), one veth PREFIX-vI per node on it
    namespace PREFIX-nI:  lo up, veth peer renamed eth0 with address .(11+I), default route
                     via the bridge address

Cutting a node off (cut/heal) works two ways:
  - "drop" (default): iptables DROP inside the node's namespace for packets to and from the
    other nodes' addresses.  The root namespace (the test) still reaches the node, so its
    HTTP endpoint can be asked what it thinks; connections to the peers hang as on a real
    partition (no RST).
  - "link": the node's veth is set down in the root namespace: the node loses the bridge
    entirely, the test included (ask it from inside, e.g. `net.run(i, ["curl", ...])`).

Cleanup is always done: at setup, leftovers of an aborted run with the same prefix (namespaces,
links, the FORWARD rule) are removed first; close() (also at exit and on the with-block's end)
kills every process still in the namespaces and deletes namespaces, links and rules.  Needs root,
iproute2 and iptables.
"""
import atexit
import ipaddress
import os
import signal
import subprocess
import time

CMD_TIMEOUT = 20  # seconds for one ip/iptables command
CUT_CHAIN = "NETNS-CUT"  # the chain cut() fills inside a namespace


def _sh(*argv, check=True, ns=None):
    """Runs one command (inside namespace ns if given); returns stdout.  Raises with stderr."""
    if ns is not None:
        argv = ("ip", "netns", "exec", ns) + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if check and out.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), out.returncode,
                                                out.stderr.strip()))
    return out.stdout


class Netns:
    """N network namespaces joined by one Linux bridge; see the module docstring."""

    def __init__(self, prefix, n, subnet):
        """prefix: unique per test module (names are PREFIX-br, PREFIX-vI, PREFIX-nI; at most 10
        characters so interface names stay within 15); n: number of nodes; subnet: a private
        IPv4 subnet of at least /27 used only by this test (the bridge takes .1, node I takes
        .(11+I))."""
        if not prefix or len(prefix) > 10 or not prefix.replace("-", "").isalnum():
            raise ValueError("netns prefix %r: 1-10 letters, digits or '-'" % prefix)
        net = ipaddress.ip_network(subnet)
        if net.num_addresses < 32 or n < 1 or 11 + n >= net.num_addresses - 1:
            raise ValueError("subnet %s too small for %d nodes" % (subnet, n))
        self.prefix = prefix
        self.n = n
        self.prefixlen = net.prefixlen
        self.bridge = prefix + "-br"
        self.host_addr = str(net.network_address + 1)
        self.addrs = [str(net.network_address + 11 + i) for i in range(n)]
        self.names = ["%s-n%d" % (prefix, i) for i in range(n)]
        self.veths = ["%s-v%d" % (prefix, i) for i in range(n)]
        self.procs = []
        self.cut_mode = {}  # node index -> "drop" or "link" while cut
        self.up = False

    # ---- lifecycle ----

    def setup(self):
        """Removes stale leftovers with this prefix, then builds bridge, namespaces and links."""
        self.remove_stale()
        atexit.register(self.close)
        self.up = True
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", "%s/%d" % (self.host_addr, self.prefixlen), "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        # With br_netfilter loaded, bridged frames go through the root namespace's FORWARD
        # chain, whose policy may be DROP (e.g. on a Docker host): let this bridge's traffic pass.
        _sh("iptables", "-w", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge,
            "-j", "ACCEPT", "-m", "comment", "--comment", self._rule_comment())
        for i in range(self.n):
            ns, veth = self.names[i], self.veths[i]
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "set", "lo", "up", ns=ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p")
            _sh("ip", "link", "set", veth + "p", "netns", ns)
            _sh("ip", "link", "set", veth + "p", "name", "eth0", ns=ns)
            _sh("ip", "addr", "add", "%s/%d" % (self.addrs[i], self.prefixlen), "dev", "eth0",
                ns=ns)
            _sh("ip", "link", "set", "eth0", "up", ns=ns)
            _sh("ip", "route", "add", "default", "via", self.host_addr, ns=ns)
            _sh("ip", "link", "set", veth, "master", self.bridge)
            _sh("ip", "link", "set", veth, "up")
        return self

    def close(self):
        """Kills every process in the namespaces and deletes everything setup made.  Idempotent."""
        if not self.up:
            return
        self.up = False
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self.remove_stale()

    def remove_stale(self):
        """Deletes namespaces, links and FORWARD rules named with this prefix (also leftovers of
        an aborted run), killing whatever still runs inside those namespaces."""
        listed = _sh("ip", "netns", "list", check=False).split("\n")
        for line in listed:
            ns = line.split(" ")[0]
            if ns.startswith(self.prefix + "-n"):
                self._kill_namespace_pids(ns)
                _sh("ip", "netns", "del", ns, check=False)
        for line in _sh("ip", "-o", "link", "show", check=False).splitlines():
            # "12: rrdy-v0@if11: <...>": the name ends at '@' or ':'
            name = line.split(": ", 2)[1].split("@")[0] if ": " in line else ""
            if name.startswith(self.prefix + "-"):
                _sh("ip", "link", "del", name, check=False)
        for rule in _sh("iptables", "-w", "-S", "FORWARD", check=False).splitlines():
            if self._rule_comment() in rule and rule.startswith("-A "):
                _sh("iptables", "-w", "-D", *rule[3:].replace('"', "").split(), check=False)

    def _rule_comment(self):
        return "netns.py:" + self.prefix

    @staticmethod
    def _kill_namespace_pids(ns, timeout=10.0):
        pids = [int(p) for p in _sh("ip", "netns", "pids", ns, check=False).split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists("/proc/%d" % p)
                    and not _is_zombie(p)]
            time.sleep(0.05)

    def __enter__(self):
        return self.setup()

    def __exit__(self, *exc):
        self.close()

    # ---- nodes ----

    def addr(self, i):
        """Node i's address (a string)."""
        return self.addrs[i]

    def argv(self, i, argv):
        """argv wrapped to run inside node i's namespace (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.names[i], *argv]

    def popen(self, i, argv, **kw):
        """Starts argv inside node i's namespace; the process is killed by close()."""
        p = subprocess.Popen(self.argv(i, argv), **kw)
        self.procs.append(p)
        return p

    def run(self, i, argv, timeout=30, **kw):
        """Runs argv inside node i's namespace to completion (subprocess.run)."""
        return subprocess.run(self.argv(i, argv), timeout=timeout, **kw)

    # ---- partitions ----

    def cut(self, i, mode="drop"):
        """Cuts node i off from the other nodes (see the module docstring for the modes)."""
        if i in self.cut_mode:
            raise RuntimeError("node %d is already cut off" % i)
        if mode == "link":
            _sh("ip", "link", "set", self.veths[i], "down")
        elif mode == "drop":
            ns = self.names[i]
            _sh("iptables", "-w", "-N", CUT_CHAIN, ns=ns)
            for j, a in enumerate(self.addrs):
                if j != i:
                    _sh("iptables", "-w", "-A", CUT_CHAIN, "-s", a, "-j", "DROP", ns=ns)
                    _sh("iptables", "-w", "-A", CUT_CHAIN, "-d", a, "-j", "DROP", ns=ns)
            _sh("iptables", "-w", "-I", "INPUT", "-j", CUT_CHAIN, ns=ns)
            _sh("iptables", "-w", "-I", "OUTPUT", "-j", CUT_CHAIN, ns=ns)
        else:
            raise ValueError("cut mode %r: 'drop' or 'link'" % mode)
        self.cut_mode[i] = mode

    def heal(self, i):
        """Undoes cut(i)."""
        mode = self.cut_mode.pop(i)
        if mode == "link":
            _sh("ip", "link", "set", self.veths[i], "up")
        else:
            ns = self.names[i]
            _sh("iptables", "-w", "-D", "INPUT", "-j", CUT_CHAIN, ns=ns)
            _sh("iptables", "-w", "-D", "OUTPUT", "-j", CUT_CHAIN, ns=ns)
            _sh("iptables", "-w", "-F", CUT_CHAIN, ns=ns)
            _sh("iptables", "-w", "-X", CUT_CHAIN, ns=ns)


def _is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
