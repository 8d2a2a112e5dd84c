"""synctrace: relayd under strace, and a checker that every 250 a client got was synced first.

G1 says `250` after DATA means the message is fsynced (on a majority of voters).  The checker
reads what the kernel saw.  relayd runs under

    strace -f -qq -ttt -T -yy -s 4194304 -e trace=fdatasync,fsync,sync_file_range,write,
           writev,pwrite64,sendto -o TRACE relayd ...

(-yy names each fd: a path, or TCP:[local->peer]; -ttt -T give each call's start and duration
on the machine's clock, comparable between the traces of several processes).  For every write
to a TCP socket carrying `250 ... queued as QID`, the checker looks, in each node's trace, for a
write of the RocksDB WAL (DATA_DIR/.../NNNNNN.log) whose bytes hold QID (the Accept entry names
its queue id), and for an fsync/fdatasync of that same WAL file that started after that write
ended and returned 0 before the 250 was written: in the same process by the order of the trace's
lines (strace prints a call at its end, or splits it into "unfinished" and "resumed" lines when
another thread's call comes between, so the lines give the order of starts and ends), between
processes by time.  A node where that holds has the message durably; a 250 needs that on
`need` nodes (1 for a single node, a majority in a cluster).  sync_file_range does not count
(it syncs neither metadata nor the disk cache).

check() returns (replies, violations): the queue ids of the 250s seen, and one line per 250
that was not preceded by enough syncs.  Relayd.wrap = strace_argv(path) and
Relayd.signal_child = True run a node under strace (signals go to relayd, not to strace).
"""
import re

STRACE = "/usr/bin/strace"
TRACED = "fdatasync,fsync,sync_file_range,write,writev,pwrite64,sendto"
MAX_STRING = 4 << 20  # bytes strace prints of a buffer: a whole WAL write of a test's messages


def strace_argv(path):
    """argv prefix running a command under strace, writing its trace to path."""
    return [STRACE, "-f", "-qq", "-ttt", "-T", "-yy", "-s", str(MAX_STRING),
            "-e", "trace=" + TRACED, "-o", path, "--"]


_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+) (.*)$")
_DONE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(?: \w+ \(.*\))?\s+<(\d+\.\d+)>$", re.S)
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+|\?)(?: \w+ \(.*\))?"
                      r"\s+<(\d+\.\d+)>$", re.S)
_UNFINISHED = re.compile(r"^(\w+)\((.*) <unfinished \.\.\.>$", re.S)
_FD = re.compile(r"^(-?\d+)<(.*?)>(?:,|$)")
_WAL = re.compile(r"/\d+\.log$")
_QUEUED = re.compile(r"250 2\.0\.0 [^\"]*?queued as ([0-9A-F]+)")


class Call:
    """One system call: name, fd description, argument text, return, start/end (time, line)."""

    __slots__ = ("pid", "name", "fd", "args", "ret", "t0", "t1", "pos0", "pos1")

    def __init__(self, pid, name, args, t0, pos0):
        self.pid, self.name, self.args, self.t0, self.pos0 = pid, name, args, t0, pos0
        m = _FD.match(args)
        self.fd = m.group(2) if m else ""
        self.ret = None
        self.t1 = None
        self.pos1 = None

    def end(self, ret, dur, pos):
        self.ret = ret
        self.t1 = self.t0 + dur
        self.pos1 = pos


def parse(path):
    """The completed calls of one strace -f output, in the order of their ends."""
    calls, open_calls = [], {}
    with open(path, errors="replace") as f:
        for pos, line in enumerate(f):
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            d = _DONE.match(rest)
            if d:
                c = Call(pid, d.group(1), d.group(2), t, pos)
                c.end(d.group(3), float(d.group(4)), pos)
                calls.append(c)
                continue
            u = _UNFINISHED.match(rest)
            if u:
                open_calls[pid] = Call(pid, u.group(1), u.group(2), t, pos)
                continue
            r = _RESUMED.match(rest)
            if r and pid in open_calls:
                c = open_calls.pop(pid)
                c.args += r.group(2)
                c.end(r.group(3), float(r.group(4)), pos)
                calls.append(c)
    return calls


class Trace:
    """One node's trace: its WAL writes by queue id, its WAL syncs, its 250 replies."""

    def __init__(self, name, path):
        self.name = name
        calls = parse(path)
        self.syncs = {}     # WAL path -> [Call] of successful fsync/fdatasync
        self.wal_writes = []  # Call
        self.replies = []   # (qid, Call)
        for c in calls:
            if c.name in ("fsync", "fdatasync"):
                if _WAL.search(c.fd) and c.ret == "0":
                    self.syncs.setdefault(c.fd, []).append(c)
            elif c.name in ("write", "writev", "pwrite64"):
                if _WAL.search(c.fd):
                    self.wal_writes.append(c)
            if c.name in ("write", "writev", "sendto") and c.fd.startswith("TCP"):
                for qid in _QUEUED.findall(c.args):
                    self.replies.append((qid, c))

    def synced_before(self, qid, reply, same_process):
        """The first sync on this node that makes qid durable and returned before reply (a
        Call, in this trace when same_process, else in another one), or None."""
        for w in self.wal_writes:
            if qid not in w.args:
                continue
            for s in self.syncs.get(w.fd, []):
                if s.pos0 <= w.pos1:
                    continue  # started before the write ended
                if same_process:
                    if s.pos1 < reply.pos0:
                        return s
                elif s.t1 < reply.t0:
                    return s
        return None


def check(traces, need, stats=None):
    """traces: {name: path}.  Every 250 (queued as QID) written by any of them must follow
    a sync of a WAL write holding QID on `need` nodes.  Returns (qids of the 250s, violations);
    stats (a dict), when given, counts the 250s by how many nodes had synced before them."""
    parsed = {n: Trace(n, p) for n, p in traces.items()}
    qids, violations = [], []
    for name, tr in parsed.items():
        for qid, reply in tr.replies:
            qids.append(qid)
            durable = []
            for other in parsed.values():
                s = other.synced_before(qid, reply, other is tr)
                if s is not None:
                    durable.append(other.name)
            if stats is not None:
                stats[len(durable)] = stats.get(len(durable), 0) + 1
            if len(durable) < need:
                held = [o.name for o in parsed.values()
                        if any(qid in w.args for w in o.wal_writes)]
                violations.append(
                    "%s: 250 for %s at %.6f synced before it on %s (need %d); in the WAL of %s"
                    % (name, qid, reply.t0, durable or "no node", need, held or "no node"))
    return qids, violations
