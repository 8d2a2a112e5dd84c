"""relaytest: start and stop real relayd processes (and their peers) for integration tests.

Every test module takes its own loopback address (127.0.N.x), so ctest -j2 can run modules in
parallel.  Waits use deadlines, never fixed sleeps.  Every process a test starts is stopped in
tearDown / at exit.

Teardown checks (RelayTestCase.tearDown, for every node made with self.relayd()): a node still
running is stopped with SIGTERM and must exit 0 within STOP_TIMEOUT; every earlier run of every
node must have ended as the test said it would (Relayd.kill: SIGKILL; Relayd.stop: exit 0;
Relayd.expect_exit: the codes given), never by another signal or on its own; and no node log may
hold a sanitizer report (SANITIZER_MARKERS).  A problem fails the test with the node's log.

Cluster TLS: RelayTestCase.cluster_tls(names) makes a CA and one certificate per node name with
scripts/make-cluster-certs.sh (once per test) and returns {name: {cluster_ca, cluster_cert,
cluster_key, admin_ca}}, the keys to give each node, as deployed (admin_ca: relayctl's CA).
"""
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

RELAYD = os.environ.get("RELAYD", os.path.join(os.path.dirname(__file__), "../../build/node/relayd"))
KEEP = os.environ.get("RELAY_KEEP_TMP") == "1"
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
CERT_SCRIPT = os.path.join(TOP, "scripts/make-cluster-certs.sh")
STOP_TIMEOUT = 20.0  # seconds a node stopped at teardown has to exit after SIGTERM
# A line holding one of these in a node's log is a sanitizer report (ASan, UBSan, LSan).
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                     "ERROR: UndefinedBehaviorSanitizer")

_procs = []


def _kill_all():
    for p in _procs:
        if p.poll() is None:
            # a tracer (strace) leaves its tracee running when it dies: its children first
            try:
                with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
                    for kid in f.read().split():
                        os.kill(int(kid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


atexit.register(_kill_all)


def wait_for(cond, timeout=10.0, what="condition", interval=0.02):
    """Polls cond() until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def sanitizer_reports(text):
    """The lines of text that are (the start of) a sanitizer report."""
    return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKERS)]


def describe_exit(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit code %d" % rc


def make_cluster_certs(directory, names):
    """A cluster CA and a certificate per node name in directory (make-cluster-certs.sh), and
    the admin CA of relayctl's certificate (admin_ca: an admin_listen is mutual TLS with it)."""
    subprocess.run(["bash", CERT_SCRIPT, directory, *names], check=True, capture_output=True,
                   timeout=120)
    return {n: {"cluster_ca": os.path.join(directory, "ca.crt"),
                "cluster_cert": os.path.join(directory, n + ".crt"),
                "cluster_key": os.path.join(directory, n + ".key"),
                "admin_ca": os.path.join(directory, "admin-ca.crt")} for n in names}


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Relayd:
    """One relayd process with its own data dir and config file."""

    def __init__(self, workdir, name="node1", addr="127.0.0.1", port=2525, **keys):
        self.workdir = workdir
        self.name = name
        self.addr = addr
        self.port = port
        self.data_dir = os.path.join(workdir, name + "-data")
        self.log_path = os.path.join(workdir, name + ".log")
        self.conf_path = os.path.join(workdir, name + ".conf")
        self.keys = {
            "node_id": name,
            "hostname": name + ".relay.test",
            "data_dir": self.data_dir,
            "smtp_listen": "%s:%d" % (addr, port),
            "mynetworks": "127.0.0.0/8",
            "log_level": "info",
            # Never the system resolver (/etc/resolv.conf is not on loopback): by default a
            # closed loopback port, so lookups fail fast and deliveries defer.  Tests that
            # deliver start their own dnsmasq and set dns_servers.
            "dns_servers": "127.0.0.1:9",
        }
        self.keys.update({k: str(v) for k, v in keys.items()})
        self.proc = None
        # argv prefix, e.g. ["ip", "netns", "exec", NS] to run inside a network namespace
        # (netns.Netns.argv); it must exec relayd so that self.proc is relayd itself, unless
        # signal_child is set: then self.proc is a tracer (strace) whose one child is relayd,
        # signals go to that child, and the tracer ends as relayd ended
        self.wrap = []
        self.signal_child = False
        # extra environment for the process (added to this process's environment)
        self.env = {}
        # How the current run may end: None while it must keep running until the test stops
        # it, else a set of return codes (negative: killed by that signal).
        self.expected = None
        self.runs = []  # (return code, expected) of every run that ended

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write("# written by relaytest\n")
            for k, v in self.keys.items():
                f.write("%s = %s\n" % (k, v))

    def start(self, extra_args=(), wait=True, timeout=20.0):
        self._reap()
        self.write_config()
        self.logf = open(self.log_path, "ab")
        log_from = self.logf.tell()  # this run's lines start here
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen([*self.wrap, RELAYD, "--config", self.conf_path, *extra_args],
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.expected = None
        _procs.append(self.proc)
        self.started_at = time.monotonic()
        if wait:
            # listening, and started: the port alone could be another process's (a test of
            # another checkout on the same address)
            wait_for(lambda: self.proc.poll() is not None or (
                port_open(self.addr, self.port) and b"event=started" in self._log_from(log_from)),
                timeout, "relayd %s to listen on %s:%d" % (self.name, self.addr, self.port))
            if self.proc.poll() is not None:
                raise AssertionError("relayd exited with %d:\n%s" % (self.proc.returncode, self.log()))
        return self

    def _log_from(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read()

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def pid(self):
        """The pid of relayd itself (see signal_child)."""
        if not self.signal_child:
            return self.proc.pid
        p = self.proc.pid
        with open("/proc/%d/task/%d/children" % (p, p)) as f:
            kids = f.read().split()
        if len(kids) != 1:
            raise AssertionError("%s: %d children under the tracer" % (self.name, len(kids)))
        return int(kids[0])

    def send_signal(self, sig):
        """Sends sig to relayd (not to a tracer wrapping it)."""
        try:
            os.kill(self.pid(), sig)
        except (ProcessLookupError, FileNotFoundError):
            pass

    def stop(self, timeout=20.0):
        """SIGTERM and wait (a stopped process is continued); returns the exit code, which must
        be 0."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.expected = {0}
        self.send_signal(signal.SIGTERM)
        self.send_signal(signal.SIGCONT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("relayd did not exit within %.0fs of SIGTERM" % timeout)

    def kill(self):
        """SIGKILL and wait: the run ends killed, as the test wants."""
        if self.proc is not None and self.proc.poll() is None:
            self.expected = {-signal.SIGKILL}
            self.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the tracer itself
                self.proc.wait(10)

    def terminate(self):
        """SIGTERM without waiting: the run is to end with exit code 0 (a clean stop)."""
        self.expected = {0}
        self.send_signal(signal.SIGTERM)

    def expect_exit(self, *codes):
        """The current run is to end on its own with one of codes (e.g. 1: refuses to start)."""
        self.expected = set(codes)

    def _reap(self):
        """Notes how the previous run ended (it must have ended)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                raise AssertionError("relayd %s started twice" % self.name)
            self.runs.append((self.proc.returncode, self.expected))
            self.proc = None
            self.logf.close()

    def problems(self):
        """Runs that ended other than expected, and sanitizer reports in the log.  Call once the
        node is stopped."""
        if self.proc is not None and self.proc.poll() is not None:
            self._reap()
        out = []
        for k, (rc, expected) in enumerate(self.runs):
            if expected is None or rc not in expected:
                out.append("relayd %s run %d: %s, expected %s" % (
                    self.name, k + 1, describe_exit(rc),
                    "it to run until stopped" if expected is None
                    else " or ".join(describe_exit(c) for c in sorted(expected))))
        reports = sanitizer_reports(self.log())
        if reports:
            out.append("relayd %s log holds %d sanitizer report line(s), first: %s" % (
                self.name, len(reports), reports[0]))
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def dump_queue(self):
        """The queue as seen by `relayd --dump-queue --json` (offline, read-only)."""
        out = subprocess.run([RELAYD, "--config", self.conf_path, "--dump-queue", "--json"],
                             capture_output=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError("--dump-queue failed (%d): %s" % (out.returncode, out.stderr.decode()))
        msgs = {}
        for line in out.stdout.decode().splitlines():
            line = line.strip()
            if line:
                m = json.loads(line)
                msgs[m["queue_id"]] = m
        return msgs


class RelayTestCase(unittest.TestCase):
    """Gives each test a temp dir and stops every relayd it made."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="relaytest-")
        self.nodes = []
        self._certs = None

    def tearDown(self):
        failed = False
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and getattr(outcome, "result", None) is not None:
            res = outcome.result
            failed = any(t is self for t, _ in res.failures + res.errors)
        problems = self.stop_nodes()
        for n in self.nodes:
            if failed or problems:
                print("---- log of %s ----\n%s" % (n.name, n.log()[-6000:]))
        if not KEEP and not failed and not problems:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print("kept", self.tmp)
        if problems:
            raise AssertionError("teardown: " + "; ".join(problems))

    def stop_nodes(self):
        """Stops every node still running (SIGTERM: exit 0 within STOP_TIMEOUT) and returns the
        problems of all nodes (see the module docstring)."""
        problems = []
        for n in self.nodes:
            if n.alive():
                try:
                    rc = n.stop(STOP_TIMEOUT)
                except AssertionError as e:
                    problems.append("relayd %s: %s" % (n.name, e))
                    n.expected = {-signal.SIGKILL}  # said above; do not count it twice
                    continue
                if rc != 0:
                    problems.append("relayd %s: %s on SIGTERM at teardown" % (
                        n.name, describe_exit(rc)))
                    n.expected = {rc}
        for n in self.nodes:
            problems.extend(n.problems())
        return problems

    def relayd(self, **kw):
        n = Relayd(self.tmp, **kw)
        self.nodes.append(n)
        return n

    def cluster_tls(self, names):
        """Cluster TLS keys per node name: a CA and certificates made for this test (the names
        must all be given in the first call)."""
        if self._certs is None:
            self._certs = make_cluster_certs(os.path.join(self.tmp, "certs"), names)
        missing = [n for n in names if n not in self._certs]
        if missing:
            raise AssertionError("cluster_tls: no certificate made for %s" % missing)
        return {n: self._certs[n] for n in names}

    def admin_tls_args(self):
        """relayctl's --ca/--cert/--key: the cluster CA (it signed the nodes' certificates) and
        relayctl's certificate of the admin CA (cluster_tls's nodes have it as admin_ca)."""
        d = os.path.join(self.tmp, "certs")
        return ["--ca", os.path.join(d, "ca.crt"), "--cert", os.path.join(d, "admin.crt"),
                "--key", os.path.join(d, "admin.key")]


class SmtpConn:
    """A raw SMTP client over a socket, for pipelining, BDAT and malformed input."""

    def __init__(self, host, port, source=None, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def reply(self):
        """Reads one (possibly multi-line) reply; returns (code, [lines])."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed after %r" % self.buf)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            line = line.decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), lines

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def closed(self, timeout=5.0):
        """True when the server closes the connection (after any remaining bytes)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        self.sock.close()
