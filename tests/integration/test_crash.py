"""Durability (G1 for one node): every message answered 250 survives SIGKILL.

Several client threads send a stream of messages; the test SIGKILLs relayd mid-stream, restarts
it on the same data dir, and checks through `relayd --dump-queue` that every queue id a client
got in a 250 reply is present.  Also checks that a restart with a large queue loads it all
(its duration is printed; the restart time target is measured by a benchmark).
Address: 127.0.4.x (this module only).
"""
import smtplib
import threading
import time
import unittest

from relaytest import RelayTestCase, wait_for

ADDR = "127.0.4.1"
PORT = 2525


class CrashTest(RelayTestCase):
    def sender(self, tid, acked, stop):
        n = 0
        while not stop.is_set() and n < 2000:
            try:
                with smtplib.SMTP(ADDR, PORT, timeout=10) as s:
                    s.ehlo()
                    while not stop.is_set() and n < 2000:
                        n += 1
                        s.mail("t%d@crash.test" % tid)
                        s.rcpt("r%d-%d@dest.example" % (tid, n))
                        code, text = s.data(("Subject: %d/%d\r\n\r\n" % (tid, n)) + "x" * 2000)
                        if code == 250:
                            acked.append(text.decode().split("queued as ")[1].split()[0])
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)   # the node is down: retry until stop

    def test_sigkill_mid_stream_loses_nothing_acked(self):
        node = self.relayd(addr=ADDR, port=PORT)
        node.start()
        acked, stop = [], threading.Event()
        threads = [threading.Thread(target=self.sender, args=(i, acked, stop)) for i in range(6)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(acked) >= 300, 60, "300 acked messages")
            node.kill()                      # SIGKILL mid-stream
            before_kill = len(acked)
            node.start()                     # same data dir
            wait_for(lambda: len(acked) >= before_kill + 100, 60, "100 more after restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        node.kill()
        q = node.dump_queue()
        missing = [i for i in acked if i not in q]
        self.assertEqual(missing, [], "%d of %d acked messages lost" % (len(missing), len(acked)))
        self.assertEqual(len(set(acked)), len(acked))

    def test_restart_with_large_queue_is_fast(self):
        node = self.relayd(addr="127.0.4.2", port=PORT)
        node.start()
        acked = []
        stop = threading.Event()

        def send(tid):
            with smtplib.SMTP("127.0.4.2", PORT, timeout=30) as s:
                s.ehlo()
                for i in range(1250):
                    s.mail("a@b.test")
                    s.rcpt("c%d@d.test" % i)
                    s.rcpt("e%d@f.test" % i)
                    code, text = s.data("Subject: %d\r\n\r\n%s\r\n" % (i, "y" * 1000))
                    if code == 250:
                        acked.append(1)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(len(acked), 10000)
        node.kill()
        t0 = time.monotonic()
        node.start(timeout=30)
        took = time.monotonic() - t0
        # How fast is a benchmark's question (bench/, issue 14), not a timed test's: under ASan
        # on a loaded 2-core machine this took over 5 s.  The bound here only says it loads.
        print("restart with 10000 messages took %.2fs" % took)
        self.assertIn("messages=10000", node.log())


if __name__ == "__main__":
    unittest.main()
