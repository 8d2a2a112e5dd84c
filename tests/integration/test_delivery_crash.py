"""Delivery across a crash (G2/G3): every message answered 250 is delivered, even when relayd is
SIGKILLed in the middle of a stream (duplicates are allowed - at-least-once - and reported).

Client threads stream messages to relayd, which routes them (transport) to an aiosmtpd sink; the
test SIGKILLs relayd mid-stream, restarts it on the same data dir, and waits until the sink holds
every queue id a client got in a 250 reply (our Received: header carries it), then until the
queue is empty.  Address: 127.0.8.x (this module only).
"""
import collections
import re
import smtplib
import threading
import time
import unittest

from relaytest import RelayTestCase, wait_for
from dsttest import AioSink, queue_empty

NET = "127.0.8."
RELAY = NET + "1"
PORT = 2525
QID = re.compile(rb"\bid ([0-9A-F]{22})\b")


class DeliveryCrashTest(RelayTestCase):
    def sender(self, tid, acked, stop):
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP(RELAY, PORT, timeout=10) as s:
                    s.ehlo()
                    while not stop.is_set():
                        n += 1
                        s.mail("t%d@src.test" % tid)
                        s.rcpt("r%d-%d@dst.test" % (tid, n))
                        code, text = s.data("Subject: %d/%d\r\n\r\n%s" % (tid, n, ("x" * 75 + "\r\n") * 20))
                        if code == 250:
                            acked.append(text.decode().split("queued as ")[1].split()[0])
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)   # the node is down: retry until stop

    def delivered_ids(self, sink):
        c = collections.Counter()
        for _, _, data in sink.snapshot():
            m = QID.search(data.split(b"\r\n\r\n", 1)[0])
            if m:
                c[m.group(1).decode()] += 1
        return c

    def test_sigkill_mid_stream_every_acked_message_delivered(self):
        sink = AioSink(NET + "10").start()
        self.addCleanup(sink.stop)
        node = self.relayd(addr=RELAY, port=PORT, transport="dst.test=127.0.8.10:25",
                           dns_servers="127.0.8.53:53", retry_base="1s", retry_max="2s")
        node.start()
        acked, stop = [], threading.Event()
        threads = [threading.Thread(target=self.sender, args=(i, acked, stop)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(acked) >= 1000 and sink.count() >= 300, 60,
                     "1000 acked, 300 delivered")
            node.kill()                       # SIGKILL mid-stream, deliveries in flight
            before = len(acked)
            node.start()
            wait_for(lambda: len(acked) >= before + 500, 60, "500 more after the restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        want = set(acked)
        wait_for(lambda: want <= set(self.delivered_ids(sink)), 60,
                 "every acked message at the sink")
        wait_for(lambda: queue_empty(node), 30, "the queue to drain")
        got = self.delivered_ids(sink)
        dups = {k: v for k, v in got.items() if v > 1}
        print("acked=%d delivered=%d distinct=%d duplicates=%d (at-least-once: allowed)"
              % (len(acked), sum(got.values()), len(got), len(dups)))
        self.assertEqual(sorted(want - set(got)), [])
        self.assertEqual(len(want), len(acked))
        node.stop()


if __name__ == "__main__":
    unittest.main()
