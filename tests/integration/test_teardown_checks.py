"""test_teardown_checks: the teardown checks of relaytest catch what they are for (issue 11).

Every integration test that starts relayd through RelayTestCase.relayd() gets, at teardown: each
node still running is stopped with SIGTERM and must exit 0; every run must have ended as the test
said (kill: SIGKILL, stop/terminate: 0, expect_exit: the codes given); no node log may hold a
sanitizer report.  These cases show that each check fires (a check that cannot fail proves
nothing), on relayd on 127.0.36.1-3.
"""
import signal
import unittest

from relaytest import RelayTestCase, wait_for


class TeardownChecksTest(RelayTestCase):
    def test_expected_ends_pass(self):
        n = self.relayd(addr="127.0.36.1", port=2525)
        n.start()
        n.kill()                      # SIGKILL, as the test wants
        n.start()
        self.assertEqual(n.stop(), 0)  # SIGTERM: exit 0
        n.keys["log_level"] = "loud"     # a bad value: relayd refuses to start with exit 2
        n.start(wait=False)
        n.expect_exit(2)
        wait_for(lambda: not n.alive(), 10, "relayd to refuse the config")
        self.assertEqual(n.problems(), [])

    def test_unexpected_signal_and_exit_are_reported(self):
        n = self.relayd(addr="127.0.36.2", port=2525)
        n.start()
        n.proc.send_signal(signal.SIGABRT)  # as a crash or an assertion would end it
        wait_for(lambda: not n.alive(), 10, "relayd to die")
        n.start()
        n.kill()
        n.keys["log_level"] = "loud"
        n.start(wait=False)                 # exits 2, and the test said nothing
        wait_for(lambda: not n.alive(), 10, "relayd to refuse the config")
        problems = n.problems()
        print(problems)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("run 1: killed by SIGABRT, expected it to run until stopped", problems[0])
        self.assertIn("run 3: exit code 2, expected it to run until stopped", problems[1])
        n.runs = []  # seen: do not fail this test's own teardown

    def test_sanitizer_report_in_log_is_reported(self):
        n = self.relayd(addr="127.0.36.3", port=2525)
        n.start()
        self.assertEqual(n.stop(), 0)
        self.assertEqual(n.problems(), [])
        for line in ("==42==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020",
                     "node/x.c:12:3: runtime error: signed integer overflow",
                     "==42==ERROR: LeakSanitizer: detected memory leaks"):
            with open(n.log_path, "a") as f:
                f.write(line + "\n")
            problems = n.problems()
            self.assertEqual(len(problems), 1, problems)
            self.assertIn(line, problems[0])
            with open(n.log_path, "w") as f:
                f.write("")


if __name__ == "__main__":
    unittest.main()
