"""relaytest: start and stop real relayd processes (and their peers) for integration tests.

Every test module takes its own loopback address (127.0.N.x), so ctest -j2 can run modules in
parallel.  Waits use deadlines, never fixed sleeps.  Every process a test starts is stopped in
tearDown / at exit.
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

_procs = []


def _kill_all():
    for p in _procs:
        if p.poll() is None:
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
        # (netns.Netns.argv); it must exec relayd so that self.proc is relayd itself
        self.wrap = []
        # environment of the process (None: this one's), e.g. LD_PRELOAD=libfaketime
        self.env = None

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write("# written by relaytest\n")
            for k, v in self.keys.items():
                f.write("%s = %s\n" % (k, v))

    def start(self, extra_args=(), wait=True, timeout=20.0):
        self.write_config()
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrap, RELAYD, "--config", self.conf_path, *extra_args],
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
        _procs.append(self.proc)
        self.started_at = time.monotonic()
        if wait:
            wait_for(lambda: self.proc.poll() is not None or port_open(self.addr, self.port),
                     timeout, "relayd %s to listen on %s:%d" % (self.name, self.addr, self.port))
            if self.proc.poll() is not None:
                raise AssertionError("relayd exited with %d:\n%s" % (self.proc.returncode, self.log()))
        return self

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("relayd did not exit within %.0fs of SIGTERM" % timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

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

    def tearDown(self):
        failed = False
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and getattr(outcome, "result", None) is not None:
            res = outcome.result
            failed = any(t is self for t, _ in res.failures + res.errors)
        for n in self.nodes:
            n.kill()
            if failed:
                print("---- log of %s ----\n%s" % (n.name, n.log()[-6000:]))
        if not KEEP and not failed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print("kept", self.tmp)

    def relayd(self, **kw):
        n = Relayd(self.tmp, **kw)
        self.nodes.append(n)
        return n


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
