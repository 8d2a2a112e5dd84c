"""SIGTERM: stop accepting, let a message in progress finish, 421 the idle sessions, exit 0.

Address: 127.0.6.x (this module only).
"""
import socket
import unittest

from relaytest import RelayTestCase, SmtpConn, port_open, wait_for

ADDR = "127.0.6.1"
PORT = 2525


class ShutdownTest(RelayTestCase):
    def test_sigterm(self):
        node = self.relayd(addr=ADDR, port=PORT, shutdown_timeout="10s")
        node.start()
        idle = SmtpConn(ADDR, PORT)
        idle.reply()
        idle.cmd("EHLO idle.test")
        busy = SmtpConn(ADDR, PORT)
        busy.reply()
        busy.cmd("EHLO busy.test")
        busy.cmd("MAIL FROM:<a@b.test>")
        busy.cmd("RCPT TO:<c@d.test>")
        self.assertEqual(busy.cmd("DATA")[0], 354)
        busy.send("Subject: in flight\r\n\r\nfirst half\r\n")
        node.terminate()
        # the idle session hears 421 and is closed
        code, lines = idle.reply()
        self.assertEqual(code, 421, lines)
        self.assertTrue(idle.closed())
        wait_for(lambda: not port_open(ADDR, PORT), 10, "listener closed")
        # the session in DATA may finish its message, then gets 421
        busy.send("second half\r\n.\r\n")
        code, lines = busy.reply()
        self.assertEqual(code, 250, lines)
        self.assertEqual(busy.reply()[0], 421)
        self.assertEqual(node.proc.wait(15), 0)
        qid = lines[0].split("queued as ")[1].split()[0]
        self.assertIn(qid, node.dump_queue())

    def test_sigterm_cuts_stuck_session_after_bound(self):
        node = self.relayd(addr="127.0.6.2", port=PORT, shutdown_timeout="1s")
        node.start()
        c = SmtpConn("127.0.6.2", PORT)
        c.reply()
        c.cmd("EHLO stuck.test")
        c.cmd("MAIL FROM:<a@b.test>")
        c.cmd("RCPT TO:<c@d.test>")
        c.cmd("DATA")
        node.terminate()
        self.assertEqual(node.proc.wait(10), 0)
        self.assertTrue(c.closed())


if __name__ == "__main__":
    unittest.main()
