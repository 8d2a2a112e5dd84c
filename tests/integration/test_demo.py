"""test_demo: the README's first command, run as a user would run it (issue 6).

It takes the first command of the README's quick start exactly as written (`bash
scripts/run-local.sh`), runs it in the background from the top of the tree (with RELAYD and
RELAYCTL set to the build under test, so it builds nothing), and waits until HAProxy accepts on
127.0.0.1:2525.  Then:

- HAProxy's health checks (GET /readyz) pass on all three nodes (its statistics CSV);
- swaks sends a message through HAProxy to the demo domain; it must land in the sink's log
  (the file the printout names), and the node logged the client named by the PROXY v2 header;
- `relayctl --json status` against the leader shows three healthy members, and all three nodes
  agree on that one leader;
- SIGINT to the script: it exits, and every process it started (dnsmasq, smtp-sink, three
  relayd, HAProxy) is gone, nothing is left in its session, and its addresses are free.

Addresses: the demo's own (127.0.0.1:2525, 127.0.20.x); no other test uses them.
"""
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

from relaytest import port_open, sanitizer_reports, wait_for

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
RELAYCTL = os.environ.get("RELAYCTL", os.path.join(TOP, "build/node/relayctl"))
NODES = {"node1": "127.0.20.11", "node2": "127.0.20.12", "node3": "127.0.20.13"}
ADMIN_PORT = 7402
START_DEADLINE = 300      # setup.sh, certificates, three nodes electing a leader, HAProxy
PORT_FREE_DEADLINE = 180  # seconds to wait for 127.0.0.1:2525 to be free before failing
STOP_DEADLINE = 45        # the script's own bound (STOP_SECONDS, 20 s) plus a margin


def readme_first_command():
    """The first command line of the README's quick start block, its comment removed."""
    with open(os.path.join(TOP, "README.md")) as f:
        text = f.read()
    m = re.search(r"^## Quick start.*?^```sh\n(.*?)^```", text, re.S | re.M)
    assert m, "README: no ```sh block under '## Quick start'"
    first = m.group(1).splitlines()[0]
    return first.split("#", 1)[0].strip()


def proc_stat(pid):
    """(comm, state, ppid, session, starttime) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    rest = s[s.rindex(")") + 2:].split()
    return comm, rest[0], int(rest[1]), int(rest[3]), int(rest[19])


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(root):
    """{pid: (comm, starttime)} of every live descendant of root."""
    children = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st and st[1] != "Z":
            children.setdefault(st[2], []).append((pid, st))
    out, todo = {}, [root]
    while todo:
        for pid, st in children.get(todo.pop(), []):
            out[pid] = (st[0], st[4])
            todo.append(pid)
    return out


def alive(pid, starttime):
    st = proc_stat(pid)
    return st is not None and st[1] != "Z" and st[4] == starttime


def relayctl_status(addr, certs):
    """relayctl status --json against one node's admin port (mutual TLS: the demo's admin
    client certificate)."""
    out = subprocess.run([RELAYCTL, "--server", "%s:%d" % (addr, ADMIN_PORT), "--ca",
                          os.path.join(certs, "ca.crt"), "--cert",
                          os.path.join(certs, "admin.crt"), "--key",
                          os.path.join(certs, "admin.key"), "--json", "status"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


class DemoTest(unittest.TestCase):
    def setUp(self):
        self.proc = None
        self.dir = None
        fd, self.out_path = tempfile.mkstemp(prefix="test_demo-", suffix=".out")
        os.close(fd)

    def tearDown(self):
        if self.proc is not None:
            # the script leads its own session and process group: whatever is left of it
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        failed = any(t is self for t, _ in self._outcome.result.failures +
                     self._outcome.result.errors) if hasattr(self, "_outcome") else False
        if failed:
            print("---- output of the demo ----\n" + self.output()[-6000:])
            if self.dir:
                for n in NODES:
                    try:
                        with open(os.path.join(self.dir, n + ".log"), errors="replace") as f:
                            print("---- %s.log ----\n%s" % (n, f.read()[-3000:]))
                    except OSError:
                        pass
                print("kept", self.dir)
            print("kept", self.out_path)
            return
        if self.dir and self.dir.startswith("/tmp/relayd-demo."):
            shutil.rmtree(self.dir, ignore_errors=True)
        os.unlink(self.out_path)

    def output(self):
        try:
            with open(self.out_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def printed(self, pattern):
        """The first group of pattern in the demo's output so far, or None."""
        m = re.search(pattern, self.output(), re.M)
        return m.group(1) if m else None

    def test_readme_first_command(self):
        cmd = readme_first_command()
        self.assertEqual(cmd, "bash scripts/run-local.sh")
        # The demo's front address is fixed (the README's); on a shared machine something else
        # may hold it for a while (../shared/bench/postfix-baseline.sh runs Postfix there).
        wait_for(lambda: not port_open("127.0.0.1", 2525), PORT_FREE_DEADLINE,
                 "127.0.0.1:2525 to be free (in use: a benchmark's Postfix? another demo?)",
                 interval=1.0)
        env = dict(os.environ)
        env.setdefault("RELAYD", os.path.join(TOP, "build/node/relayd"))
        env.setdefault("RELAYCTL", RELAYCTL)
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(["bash", "-c", cmd], cwd=TOP, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

        # 1. HAProxy accepts (the script starts it once all three nodes are ready)
        wait_for(lambda: self.proc.poll() is not None or port_open("127.0.0.1", 2525),
                 START_DEADLINE, "HAProxy on 127.0.0.1:2525", interval=0.2)
        self.assertIsNone(self.proc.poll(), "run-local.sh exited early")
        self.dir = self.printed(r"^demo: data in (\S+)$")
        sink_log = wait_for(lambda: self.printed(r"^\s*sink log:\s*(\S+)$"), 30,
                            "the printout naming the sink's log")
        self.assertIn("swaks --server 127.0.0.1 --port 2525", self.output())
        self.assertRegex(self.output(), r"relayctl --config \S+/node1\.conf status")
        procs = descendants(self.proc.pid)
        names = sorted(c for c, _ in procs.values())
        for want in ("dnsmasq", "haproxy", "smtp-sink"):
            self.assertIn(want, names)
        self.assertEqual(sum(1 for c in names if c.startswith("relayd")), 3, names)

        # HAProxy's health checks (GET /readyz on each node's http_listen) pass on all three
        def backends_up():
            try:
                with urllib.request.urlopen("http://127.0.20.1:8404/;csv", timeout=2) as r:
                    rows = list(csv.DictReader(io.StringIO(r.read().decode().lstrip("# "))))
            except OSError:
                return None
            up = {row["svname"]: (row["status"], row["check_status"]) for row in rows
                  if row["pxname"] == "relayd" and row["svname"] in NODES}
            return up if up == {n: ("UP", "L7OK") for n in NODES} else None
        wait_for(backends_up, 30, "HAProxy: node1-3 UP with L7OK checks", interval=0.5)

        # 2. a message through HAProxy reaches the demo's sink
        token = "demo-%d-%d" % (os.getpid(), int(time.time()))
        out = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", "2525",
                              "--from", "tester@example.org", "--to", "someone@demo.example",
                              "--header", "Subject: " + token, "--body", token + "\n"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        qid = re.search(r"<-\s+250 2\.0\.0 .*queued as ([0-9A-F]+)", out.stdout)
        self.assertIsNotNone(qid, "not queued by relayd: " + out.stdout[-1500:])

        def sink_has_token():
            try:
                with open(sink_log, errors="replace") as f:
                    return token in f.read()
            except OSError:
                return False
        wait_for(sink_has_token, 60, "message %s in %s" % (qid.group(1), sink_log),
                 interval=0.2)
        # the node saw the real client through HAProxy's PROXY v2 header
        logs = ""
        for n in NODES:
            with open(os.path.join(self.dir, n + ".log"), errors="replace") as f:
                logs += f.read()
        self.assertIn(qid.group(1), logs)
        self.assertRegex(logs, r"event=connect client=127\.0\.0\.1 trusted=yes via=127\.0\.20\.1")

        # 3. relayctl: three healthy members, one leader all three agree on
        def cluster_ok():
            views = {n: relayctl_status(a, os.path.join(self.dir, "certs"))
                     for n, a in NODES.items()}
            if any(v is None for v in views.values()):
                return None
            leaders = {v["leader"] for v in views.values()}
            roles = sorted(v["role"] for v in views.values())
            if len(leaders) != 1 or roles != ["follower", "follower", "leader"]:
                return None
            lead = views[leaders.pop()]
            members = lead["members"]
            if sorted(m["id"] for m in members) != sorted(NODES) or \
                    not all(m["healthy"] for m in members):
                return None
            return lead
        lead = wait_for(cluster_ok, 30, "relayctl status: 3 healthy members, one leader",
                        interval=0.5)
        self.assertEqual(lead["role"], "leader")
        print("leader %s, members %s" % (lead["node_id"],
                                         [(m["id"], m["healthy"]) for m in lead["members"]]))

        # 4. Ctrl-C: everything it started stops, nothing is left behind
        procs = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.fail("run-local.sh still running %ds after SIGINT" % STOP_DEADLINE)
        self.assertEqual(rc, 130, "exit status after SIGINT")
        self.assertIn("demo: stopped", self.output())
        left = [(pid, c) for pid, (c, t) in procs.items() if alive(pid, t)]
        self.assertEqual(left, [], "processes the demo started are still running")
        in_session = [(pid, st[0]) for pid, st in ((p, proc_stat(p)) for p in all_pids())
                      if st is not None and st[3] == self.proc.pid]
        self.assertEqual(in_session, [], "processes left in the demo's session")
        for addr, port in [("127.0.0.1", 2525)] + [(a, p) for a in NODES.values()
                                                   for p in (2525, 8025, 7402)]:
            self.assertFalse(port_open(addr, port), "%s:%d still open" % (addr, port))
        # the teardown checks of relaytest: no sanitizer report in any node's log
        for n in NODES:
            with open(os.path.join(self.dir, n + ".log"), errors="replace") as f:
                self.assertEqual(sanitizer_reports(f.read()), [], "%s.log" % n)


if __name__ == "__main__":
    unittest.main()
