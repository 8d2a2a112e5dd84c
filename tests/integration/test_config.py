"""relayd's operator interface: config file, RELAYD_* environment, --key-name flags.

No server needed except in the override test (127.0.5.x).
"""
import os
import subprocess
import unittest

from relaytest import RELAYD, RelayTestCase


def run(args, env=None, timeout=30):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RELAYD_")}
    e.update(env or {})
    return subprocess.run([RELAYD, *args], capture_output=True, text=True, timeout=timeout, env=e)


class ConfigTest(RelayTestCase):
    def conf(self, text):
        p = os.path.join(self.tmp, "relayd.conf")
        with open(p, "w") as f:
            f.write(text)
        return p

    def test_unknown_key_in_file_names_it(self):
        p = self.conf("node_id = a\nsmtp_lisen = 127.0.0.1:25\n")
        r = run(["--config", p, "--print-config"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("smtp_lisen", r.stderr)
        self.assertIn(":2", r.stderr)   # the line number

    def test_bad_values_name_the_key(self):
        cases = [
            ("max_message_size = 10 potatoes\n", "max_message_size"),
            ("command_timeout = soon\n", "command_timeout"),
            ("smtp_listen = localhost\n", "smtp_listen"),
            ("mynetworks = 10.0.0.0/33\n", "mynetworks"),
            ("max_line_length = 100\n", "max_line_length"),
            ("relay_domains = bad..domain\n", "relay_domains"),
            ("transport = example.com\n", "transport"),
            ("tls_cert = /x.pem\n", "tls_key"),
            ("log_level = loud\n", "log_level"),
            # admission by the cluster CA: never without cluster TLS
            ("node_id = a\ncluster_listen = 127.0.0.1:7401\npeers = a=127.0.0.1:7401, "
             "b=127.0.0.2:7401\nauto_join = yes\n", "auto_join"),
            ("auto_join = maybe\n", "auto_join"),
            # a joining node must announce an address the members reach
            ("node_id = c\ncluster_listen = 0.0.0.0:7401\npeers = a=127.0.0.1:7401, "
             "b=127.0.0.2:7401\nauto_join = yes\ncluster_ca = /x\ncluster_cert = /y\n"
             "cluster_key = /z\n", "cluster_advertise"),
            ("cluster_advertise = nohost\n", "cluster_advertise"),
            ("cluster_advertise = 0.0.0.0:7401\n", "cluster_advertise"),
            ("just a line\n", "key = value"),
        ]
        for text, key in cases:
            r = run(["--config", self.conf(text), "--print-config"])
            self.assertEqual(r.returncode, 2, text)
            self.assertIn(key, r.stderr, text)

    def test_unknown_flag_and_env(self):
        r = run(["--no-such-key=1", "--print-config"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("no-such-key", r.stderr)
        r = run(["--max_errors=3", "--print-config"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("dashes", r.stderr)
        r = run(["--print-config"], env={"RELAYD_NO_SUCH": "1"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("NO_SUCH", r.stderr)

    def test_precedence_file_env_flag(self):
        p = self.conf("max_errors = 3\nmax_recipients = 7\ndata_timeout = 2m\n")
        r = run(["--config", p, "--max-recipients=9", "--print-config"],
                env={"RELAYD_MAX_ERRORS": "4", "RELAYD_MAX_RECIPIENTS": "8"})
        self.assertEqual(r.returncode, 0, r.stderr)
        conf = dict(l.split(" = ", 1) for l in r.stdout.splitlines())
        self.assertEqual(conf["max_errors"], "4")       # env over file
        self.assertEqual(conf["max_recipients"], "9")   # flag over env
        self.assertEqual(conf["data_timeout"], "120000ms")

    def test_every_key_is_documented_in_readme(self):
        r = run(["--help-config"])
        self.assertEqual(r.returncode, 0)
        keys = [l.split("`")[1] for l in r.stdout.splitlines() if l.startswith("| `")]
        self.assertGreater(len(keys), 15)
        readme = open(os.path.join(os.path.dirname(__file__), "../../README.md")).read()
        for k in keys:
            self.assertTrue("`%s`" % k in readme, "README lacks config key %s" % k)

    def test_flags_override_file_on_a_running_node(self):
        n = self.relayd(addr="127.0.5.1", port=2525, max_recipients=1)
        n.start(extra_args=["--max-recipients=2", "--hostname=flag.relay.test"])
        import smtplib
        with smtplib.SMTP("127.0.5.1", 2525, timeout=10) as s:
            code, msg = s.ehlo()
            self.assertIn(b"flag.relay.test", msg)
            s.mail("a@b.test")
            self.assertEqual(s.rcpt("1@c.test")[0], 250)
            self.assertEqual(s.rcpt("2@c.test")[0], 250)
            self.assertEqual(s.rcpt("3@c.test")[0], 452)


if __name__ == "__main__":
    unittest.main()
