#!/usr/bin/python3
"""bench/latency.py: end of DATA -> reply at a fixed offered rate (open loop).

    latency.py HOST:PORT RATE SECONDS [--conns N] [--size BYTES] [--from A] [--to B]
               [--metrics URL] [--no-uvloop]

Sends RATE messages per second for SECONDS seconds over N persistent SMTP sessions (default 20):
message k is due at start + k / RATE whatever the replies before it did (a slow reply does not
slow the offered load down; a session that is still busy when its next message is due sends it
as soon as it is free, and that lag is reported).  For each message it times the final
"<CRLF>.<CRLF>" -> the reply, on the client's monotonic clock.  With --metrics (the relay's
/metrics URL) it also reads relay_proposal_latency_seconds and relay_cluster_log_write_seconds
(disk and turn) before and after and reports the bucket bounds that hold the server's p50 and
p99 for this run alone.  Each session pipelines MAIL, RCPT and DATA (RFC 2920).  With Debian's python3-uvloop (scripts/setup.sh) the sessions run
on uvloop: the generator shares the machine with the relay, and asyncio's own loop took 2.5x the
CPU (measured at 600 msg/s: 3.9 s against 1.6 s over 15 s).

Prints one line per figure ("# ..." lines, then "latency ..." results).  Exit 1 when any message
got no 250 (they are counted and shown).
"""
import argparse
import asyncio
import re
import sys
import time
import urllib.request


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("rate", type=float)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--from", dest="mail_from", default="s@src.perfbase.test")
    ap.add_argument("--to", dest="rcpt_to", default="r@dst.perfbase.test")
    ap.add_argument("--metrics", default="")
    ap.add_argument("--no-uvloop", action="store_true", help="asyncio's own loop even with uvloop")
    a = ap.parse_args()
    if a.rate <= 0 or a.seconds <= 0 or a.conns <= 0 or a.seconds * a.rate > 1_000_000:
        ap.error("rate, seconds and conns must be positive (at most 1,000,000 messages)")
    return a


SERIES = (("relay_proposal_latency_seconds", "", "end of DATA -> cluster answer"),
          ("relay_cluster_log_write_seconds", 'stage="disk",', "synced log write, storage"),
          ("relay_cluster_log_write_seconds", 'stage="turn",',
           "synced log write, loop -> worker -> loop"))


def histogram(url):
    """For each of SERIES: its buckets [(le seconds, cumulative count)] in url's /metrics."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = []
    for name, labels, _ in SERIES:
        buckets = []
        for m in re.finditer(r'%s_bucket\{%sle="([^"]+)"\} (\d+)' % (name, re.escape(labels)),
                             text):
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, int(m.group(2))))
        out.append(buckets)
    return out


def bucket_quantile(before, after, q):
    """The upper bound (ms) of the bucket that holds quantile q of the run's own samples."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    n = counts[-1][1] if counts else 0
    if n == 0:
        return None, 0
    for le, c in counts:
        if c >= q * n:
            return le * 1000, n
    return float("inf"), n


def pct(sorted_ms, q):
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, int(q * len(sorted_ms) + 0.999999) - 1))
    return sorted_ms[i]


class Session:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.r = self.w = None

    async def reply(self):
        lines = []
        while True:
            line = await self.r.readline()
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    async def cmd(self, text, want):
        self.w.write(text.encode() + b"\r\n")
        code, full = await self.reply()
        if code != want:
            raise RuntimeError("%s -> %s" % (text, full.decode(errors="replace").strip()))

    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        code, full = await self.reply()
        if code != 220:
            raise RuntimeError("greeting: " + full.decode(errors="replace").strip())
        await self.cmd("EHLO latency.perfbase.test", 250)

    async def close(self):
        if self.w:
            try:
                self.w.write(b"QUIT\r\n")
                await asyncio.wait_for(self.reply(), 2)
            except Exception:
                pass
            self.w.close()


async def run(a):
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    total = int(a.rate * a.seconds)
    body = (b"Subject: latency\r\n\r\n" + b"x" * 76 + b"\r\n") * max(1, a.size // 78)
    envelope = ("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (a.mail_from, a.rcpt_to)).encode()
    lat, lags, errors = [], [], []
    queue = asyncio.Queue()
    t0 = time.monotonic() + 0.5

    async def producer():
        for k in range(total):
            due = t0 + k / a.rate
            d = due - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            queue.put_nowait(due)
        for _ in range(a.conns):
            queue.put_nowait(None)

    async def worker():
        s = Session(host, port)
        try:
            await s.open()
        except Exception as e:
            errors.append("connect: %s" % e)
            return
        while True:
            due = await queue.get()
            if due is None:
                break
            lags.append((time.monotonic() - due) * 1000)
            try:
                # PIPELINING (RFC 2920), as MTAs send: the envelope and DATA in one write
                s.w.write(envelope)
                for want in (250, 250, 354):
                    code, full = await s.reply()
                    if code != want:
                        raise RuntimeError("envelope: " + full.decode(errors="replace").strip())
                s.w.write(body + b".\r\n")
                await s.w.drain()
                t = time.monotonic()
                code, full = await s.reply()
                ms = (time.monotonic() - t) * 1000
                if code == 250:
                    lat.append(ms)
                else:
                    errors.append(full.decode(errors="replace").strip())
            except Exception as e:
                errors.append(str(e))
                await s.close()
                s = Session(host, port)
                try:
                    await s.open()
                except Exception as e2:
                    errors.append("reconnect: %s" % e2)
                    return
        await s.close()

    start = time.monotonic()
    await asyncio.gather(producer(), *[worker() for _ in range(a.conns)])
    return lat, lags, errors, time.monotonic() - start, total


def main():
    a = parse_args()
    loop_name = "asyncio"
    if not a.no_uvloop:
        try:  # Debian's python3-uvloop: the generator's own CPU is the machine's, not the relay's
            import uvloop
            uvloop.install()
            loop_name = "uvloop " + uvloop.__version__
        except ImportError:
            pass
    print("# generator event loop: %s" % loop_name)
    before = histogram(a.metrics) if a.metrics else None
    lat, lags, errors, wall, total = asyncio.run(run(a))
    if a.metrics:
        time.sleep(2)  # the node's /metrics may lag its event loops by a tick
    after = histogram(a.metrics) if a.metrics else None
    lat.sort()
    lags.sort()
    print("# offered %.0f msg/s for %.0f s over %d sessions, %d bytes: %d sent, %d answered 250 "
          "in %.1f s (%.0f msg/s)" % (a.rate, a.seconds, a.conns, a.size, total, len(lat), wall,
                                      len(lat) / wall if wall else 0))
    print("# client lag behind the schedule: p50 %.1f ms, p99 %.1f ms, max %.1f ms"
          % (pct(lags, 0.5), pct(lags, 0.99), lags[-1] if lags else float("nan")))
    print("latency client end of DATA -> 250: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms "
          "(n %d)" % (pct(lat, 0.5), pct(lat, 0.9), pct(lat, 0.99),
                      lat[-1] if lat else float("nan"), len(lat)))
    if before is not None:
        for (name, labels, what), b, f in zip(SERIES, before, after):
            p50, n = bucket_quantile(b, f, 0.5)
            p99, _ = bucket_quantile(b, f, 0.99)
            if n:
                print("latency server histogram (%s%s, %s, this run): p50 <= %g ms, "
                      "p99 <= %g ms (n %d)" % (name, "{%s}" % labels.rstrip(",") if labels else "",
                                                what, p50, p99, n))
    if errors:
        print("# %d errors, first: %s" % (len(errors), errors[0]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
