#!/usr/bin/env python3
"""bench/ownership.py: delivery-owner failover time and duplicates per killed owner (issue 5).

Three relayd on 127.0.0.1 (SMTP 2561-2563, cluster 7461-7463, HTTP 8461-8463), a dnsmasq on
127.0.19.53 with DOMAINS destination domains whose MX is one slow destination (aiosmtpd on
127.0.19.25, DELAY seconds per message, so attempts are in flight when an owner dies).  Each
round: MSGS messages (one recipient, a random domain) go to the three nodes; once every node has
delivered some, the node that delivered most is SIGKILLed.  Its domains are those the sink saw
it deliver (by EHLO name).  Measured:

  failover   kill -> the first delivery, by another node, of a message for one of its domains
  dups       messages of the round the sink received more than once (each one is an attempt the
             dead owner completed at the destination before its outcome committed)
  lost       messages of the round never received (must be 0)

then the victim is restarted and rejoins (LIVE).  ROUNDS rounds; prints one line per round and
the medians.  Env: RELAYD, ROUNDS (10), MSGS (300), DOMAINS (24), DELAY (0.2), LEASE (4s).
"""
import asyncio
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELAYD = os.environ.get("RELAYD", os.path.join(TOP, "build/node/relayd"))
ROUNDS = int(os.environ.get("ROUNDS", "10"))
MSGS = int(os.environ.get("MSGS", "300"))
NDOM = int(os.environ.get("DOMAINS", "24"))
DELAY = float(os.environ.get("DELAY", "0.2"))
LEASE = os.environ.get("LEASE", "4s")
DNS = "127.0.19.53"
MX = "127.0.19.25"
NAMES = ["c1", "c2", "c3"]
PEERS = ",".join("c%d=127.0.0.1:%d" % (i, 7460 + i) for i in (1, 2, 3))
DOMS = ["d%d.own.test" % k for k in range(NDOM)]


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.02)


class Sink:
    """aiosmtpd, DELAY s per DATA; keeps (time, ehlo, rcpt domain, bench id)."""

    def __init__(self):
        from aiosmtpd.controller import Controller
        self.lock = threading.Lock()
        self.got = []
        sink = self

        class H:
            async def handle_DATA(self, server, session, env):
                await asyncio.sleep(DELAY)
                bid = None
                for line in env.original_content.split(b"\r\n"):
                    if line.startswith(b"X-Bench-Id: "):
                        bid = line[12:].decode()
                        break
                    if line == b"":
                        break
                with sink.lock:
                    sink.got.append((time.monotonic(), session.host_name,
                                     env.rcpt_tos[0].split("@")[1], bid))
                return "250 2.0.0 Ok"

        self.ctl = Controller(H(), hostname=MX, port=25, ready_timeout=10)

    def snap(self):
        with self.lock:
            return list(self.got)


def metrics(i):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (8460 + i), timeout=1) as r:
            return r.read().decode()
    except OSError:
        return ""


class Node:
    def __init__(self, work, i):
        self.i, self.name, self.work = i, "c%d" % i, work
        self.proc = None

    def start(self):
        log = open(os.path.join(self.work, self.name + ".log"), "ab")
        self.proc = subprocess.Popen([
            RELAYD, "--node-id=" + self.name, "--hostname=%s.relay.test" % self.name,
            "--data-dir=" + os.path.join(self.work, self.name),
            "--smtp-listen=127.0.0.1:%d" % (2560 + self.i),
            "--http-listen=127.0.0.1:%d" % (8460 + self.i),
            "--cluster-listen=127.0.0.1:%d" % (7460 + self.i), "--peers=" + PEERS,
            "--mynetworks=127.0.0.0/8", "--dns-servers=%s:53" % DNS, "--lease=" + LEASE,
            "--election-timeout=500ms", "--heartbeat-interval=50ms",
            "--retry-base=1s", "--retry-max=2s", "--max-connections-per-client=1000",
            "--log-level=warn"], stdout=log, stderr=log)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def leader(nodes):
    for n in nodes:
        if n.proc and n.proc.poll() is None and "relay_raft_is_leader 1" in metrics(n.i):
            return n
    return None


def live_members(n):
    m = metrics(n.i)
    return sum(1 for name in NAMES
               if 'relay_ownership_member_state{node="%s",state="live"} 1' % name in m)


def send(nodes, rnd, count):
    ids = ["r%d-%d" % (rnd, k) for k in range(count)]
    todo = list(ids)
    lock = threading.Lock()

    def worker(w):
        while True:
            with lock:
                if not todo:
                    return
                bid = todo.pop()
            k = int(bid.split("-")[1])
            for attempt in range(50):
                n = nodes[(k + attempt) % 3]
                try:
                    with smtplib.SMTP("127.0.0.1", 2560 + n.i, timeout=20) as s:
                        dom = DOMS[(k * 7 + rnd) % NDOM]
                        msg = ("X-Bench-Id: %s\r\nSubject: %s\r\n\r\nbody\r\n" % (bid, bid))
                        s.sendmail("bench@client.test", ["u%d@%s" % (k, dom)], msg.encode())
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.1)
            else:
                raise SystemExit("could not submit " + bid)

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return set(ids)


def main():
    if shutil.which("dnsmasq") is None:
        raise SystemExit("dnsmasq missing: bash scripts/setup.sh")
    work = tempfile.mkdtemp(prefix="relayd-own.")
    dn = subprocess.Popen(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                           "--conf-file=/dev/null", "--listen-address=" + DNS, "--port=53",
                           "--bind-interfaces", "--local=/own.test/", "--user=root",
                           "--group=root", "--pid-file=", "--local-ttl=60",
                           "--address=/mx.own.test/" + MX] +
                          ["--mx-host=%s,mx.own.test,10" % d for d in DOMS],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sink = Sink()
    sink.ctl.start()
    nodes = [Node(work, i) for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: leader(nodes), 30, "a leader")
        wait_for(lambda: live_members(leader(nodes) or nodes[0]) == 3, 30, "3 live members")
        rows = []
        for rnd in range(ROUNDS):
            start_len = len(sink.snap())
            ids = send(nodes, rnd, MSGS)
            # everyone delivering
            def by_node():
                c = {}
                for _, ehlo, _, bid in sink.snap()[start_len:]:
                    c[ehlo] = c.get(ehlo, 0) + 1
                return c
            wait_for(lambda: len(by_node()) >= 2 and sum(by_node().values()) >= MSGS // 10,
                     60, "deliveries from two nodes")
            counts = by_node()
            vname = max(counts, key=counts.get).split(".")[0]
            victim = next(n for n in nodes if n.name == vname)
            # its domains: those whose latest delivery so far was the victim's (a domain's
            # owner can change within a round: an emptied domain is forgotten and the next
            # message re-assigns it)
            last = {}
            for _, ehlo, dom, _ in sink.snap()[start_len:]:
                last[dom] = ehlo
            vdoms = {dom for dom, ehlo in last.items() if ehlo.startswith(vname + ".")}
            t0 = time.monotonic()
            victim.kill()

            def taken_over():
                for t, ehlo, dom, _ in sink.snap()[start_len:]:
                    if t > t0 and dom in vdoms and not ehlo.startswith(vname + "."):
                        return t
                return None
            t1 = wait_for(taken_over, 60, "another node delivering the victim's domains")
            wait_for(lambda: ids <= {b for *_, b in sink.snap()[start_len:]}, 120,
                     "every message of the round delivered")
            got = [b for *_, b in sink.snap()[start_len:] if b in ids]
            dups = len(got) - len(set(got))
            lost = len(ids - set(got))
            rows.append((t1 - t0, dups, lost))
            print("round %d: victim %s owned %d domains; failover %.2f s; duplicates %d; lost %d"
                  % (rnd + 1, vname, len(vdoms), t1 - t0, dups, lost), flush=True)
            victim.start()
            wait_for(lambda: leader(nodes), 30, "a leader")
            wait_for(lambda: live_members(leader(nodes) or nodes[0]) == 3, 60,
                     "the victim LIVE again")
        fo = [r[0] for r in rows]
        print("owner failover (kill -> first delivery of its domains elsewhere): median %.2f s, "
              "min %.2f, max %.2f over %d kills; duplicates per killed owner: median %s, max %d; "
              "lost: %d" % (statistics.median(fo), min(fo), max(fo), len(fo),
                            statistics.median([r[1] for r in rows]), max(r[1] for r in rows),
                            sum(r[2] for r in rows)))
        print("(lease %s; %d messages per round over %d domains; destination %.0f ms per message)"
              % (LEASE, MSGS, NDOM, DELAY * 1000))
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
        sink.ctl.stop()
        dn.kill()
        dn.wait()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)


if __name__ == "__main__":
    main()
