"""relayctl against a running relayd: every command, --json parsed, exit codes.

Single node (the 3-node checks are test_relayctl_cluster.py); the admin endpoint over mutual
TLS with its own CA, and over the node's unix socket.  Address range: 127.0.14.x (this module only).
"""
import json
import os
import smtplib
import subprocess

from relaytest import RelayTestCase, wait_for

RELAYCTL = os.environ.get("RELAYCTL", os.path.join(os.path.dirname(__file__),
                                                   "../../build/node/relayctl"))
ADDR = "127.0.14.1"
ADMIN = "127.0.14.1:7402"


def ctl(*args, server=ADMIN, timeout=20):
    r = subprocess.run([RELAYCTL, "--server", server, "--timeout", "3s", *args],
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def ctl_json(*args):
    code, out, err = ctl("--json", *args)
    return code, (json.loads(out) if out.strip() else None), err


class RelayctlTest(RelayTestCase):
    def setUp(self):
        super().setUp()
        # dns_servers points at a closed port: every message defers and stays queued
        self.node = self.relayd(addr=ADDR, port=2525, admin_listen=ADMIN, retry_base="1h",
                                retry_max="2h")
        self.node.start()
        wait_for(lambda: ctl("status")[0] == 0, 10, "admin endpoint up")

    def send(self, n, rcpt="r@far.example"):
        ids = []
        with smtplib.SMTP(ADDR, 2525, timeout=10) as s:
            s.ehlo()
            for i in range(n):
                s.mail("s%d@client.test" % i)
                s.rcpt(rcpt)
                code, text = s.data("Subject: %d\r\n\r\nbody\r\n" % i)
                self.assertEqual(code, 250)
                ids.append(text.decode().split("queued as ")[1].split()[0])
        return ids

    def test_status(self):
        self.send(3)
        code, st, err = ctl_json("status")
        self.assertEqual(code, 0, err)
        self.assertEqual(st["node_id"], "node1")
        self.assertEqual(st["role"], "single")
        self.assertEqual(st["queue"]["messages"], 3)
        self.assertGreaterEqual(st["commit_index"], 3)
        self.assertEqual(st["commit_index"], st["applied_index"])
        self.assertEqual([m["id"] for m in st["members"]], ["node1"])
        self.assertTrue(st["members"][0]["healthy"])
        code, out, err = ctl("status")
        self.assertEqual(code, 0)
        self.assertIn("MEMBER", out)
        self.assertIn("queue: 3 messages", out)

    def test_queue_list_show_delete(self):
        ids = self.send(4)
        self.send(1, rcpt="other@elsewhere.example")
        # each message was tried once (DNS fails) and waits an hour: deferred
        wait_for(lambda: ctl_json("queue", "list", "--state", "deferred")[1]["items"].__len__() == 5,
                 10, "five deferred")
        code, l, err = ctl_json("queue", "list", "--limit", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(l["items"]), 2)
        self.assertTrue(l["truncated"])
        code, l, _ = ctl_json("queue", "list", "--domain", "elsewhere.example")
        self.assertEqual([i["first_rcpt"] for i in l["items"]], ["other@elsewhere.example"])
        code, m, err = ctl_json("queue", "show", ids[0])
        self.assertEqual(code, 0, err)
        self.assertEqual(m["queue_id"], ids[0])
        self.assertEqual(m["from"], "s0@client.test")
        self.assertEqual(m["rcpts"][0]["state"], "queued")
        self.assertIn("4.4.3", m["rcpts"][0]["last_reply"])
        code, out, err = ctl("queue", "show", "NOSUCHID")
        self.assertEqual(code, 1)
        self.assertIn("no such message", err)
        code, d, err = ctl_json("queue", "delete", ids[0], ids[1], "NOSUCHID")
        self.assertEqual(code, 1)   # one id was not there
        self.assertEqual(sorted(d["deleted"]), sorted(ids[:2]))
        self.assertEqual(d["not_found"], ["NOSUCHID"])
        code, l, _ = ctl_json("queue", "list")
        self.assertEqual(len(l["items"]), 3)
        code, d, err = ctl_json("queue", "delete", "--all-deferred")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(d["deleted"]), 3)
        self.assertEqual(ctl_json("status")[1]["queue"]["messages"], 0)
        # the deletes went through the log: the offline dump agrees
        self.node.stop()
        self.assertEqual(self.node.dump_queue(), {})

    def test_exit_codes(self):
        code, out, err = ctl("status", server="127.0.14.1:7499")
        self.assertEqual(code, 3)
        self.assertIn("no answer", err)
        self.assertEqual(ctl("frobnicate")[0], 2)
        self.assertEqual(ctl("queue", "list", "--state", "weird")[0], 2)
        self.assertEqual(ctl("queue", "show")[0], 2)
        self.assertEqual(ctl("queue", "delete")[0], 2)
        code, out, err = ctl("status", server="not-an-address")
        self.assertIn(code, (2, 3))
        self.assertTrue(err.startswith("relayctl: "))


CERTS = os.path.join(os.path.dirname(__file__), "../../scripts/make-cluster-certs.sh")
TLS_ADDR = "127.0.14.2"
TLS_ADMIN = "127.0.14.2:7402"


class RelayctlTlsTest(RelayTestCase):
    """admin_listen with admin_ca is mutual TLS: relayctl needs a certificate of the admin CA
    (never the cluster CA's: that one would be a member's credential) and checks the node's
    cluster certificate against the cluster CA; the endpoint may then listen on a non-loopback
    address (checked here by the config check only).  The node's admin_socket needs no
    certificate: relayctl --config uses it (issue 12 sec. 5)."""

    def setUp(self):
        super().setUp()
        self.certs = os.path.join(self.tmp, "certs")
        self.other = os.path.join(self.tmp, "other")
        for d in (self.certs, self.other):
            subprocess.run(["bash", CERTS, d, "1"], check=True, capture_output=True)
        self.node = self.relayd(addr=TLS_ADDR, port=2525, admin_listen=TLS_ADMIN,
                                admin_ca=os.path.join(self.certs, "admin-ca.crt"),
                                cluster_ca=os.path.join(self.certs, "ca.crt"),
                                cluster_cert=os.path.join(self.certs, "node1.crt"),
                                cluster_key=os.path.join(self.certs, "node1.key"))
        self.node.start()

    def test_mutual_tls(self):
        c = self.certs
        own = ["--ca", c + "/ca.crt", "--cert", c + "/admin.crt", "--key", c + "/admin.key"]
        wait_for(lambda: ctl(*own, "status", server=TLS_ADMIN)[0] == 0, 10, "admin over TLS")
        code, out, err = ctl(*own, "--json", "status", server=TLS_ADMIN)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["node_id"], "node1")
        # no certificate, one of another admin CA, or a cluster member's: no answer
        code, out, err = ctl("status", server=TLS_ADMIN)
        self.assertEqual(code, 3, out)
        o = self.other
        code, out, err = ctl("--ca", o + "/ca.crt", "--cert", o + "/admin.crt", "--key",
                             o + "/admin.key", "status", server=TLS_ADMIN)
        self.assertEqual(code, 3, out)
        code, out, err = ctl("--ca", c + "/ca.crt", "--cert", c + "/node1.crt", "--key",
                             c + "/node1.key", "status", server=TLS_ADMIN)
        self.assertEqual(code, 3, out)
        code, out, err = ctl("--ca", c + "/ca.crt", "status", server=TLS_ADMIN)
        self.assertEqual(code, 2)  # --ca, --cert and --key go together
        # --config: the node's admin_socket (no certificate; the socket is mode 0600)
        sock = os.path.join(self.node.data_dir, "admin.sock")
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)
        r = subprocess.run([RELAYCTL, "--config", self.node.conf_path, "--json", "status"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["node_id"], "node1")
        # --config with the TCP endpoint: a certificate of admin_ca is needed (--ca: cluster_ca)
        r = subprocess.run([RELAYCTL, "--config", self.node.conf_path, "--server", TLS_ADMIN,
                            "status"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("admin_ca", r.stderr)
        r = subprocess.run([RELAYCTL, "--config", self.node.conf_path, "--server", TLS_ADMIN,
                            "--cert", c + "/admin.crt", "--key", c + "/admin.key", "status"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        # a non-loopback admin_listen is refused without admin_ca, accepted with it
        base = [os.environ.get("RELAYD", os.path.join(os.path.dirname(__file__),
                                                      "../../build/node/relayd")),
                "--config", self.node.conf_path, "--print-config"]
        r = subprocess.run(base + ["--admin-listen=10.9.9.9:7402"], capture_output=True,
                           text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run(base + ["--admin-listen=10.9.9.9:7402", "--admin-ca="],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a loopback address", r.stderr)
        # admin_ca needs the node's own certificate
        r = subprocess.run(base + ["--cluster-ca=", "--cluster-cert=", "--cluster-key="],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("admin_ca", r.stderr)


if __name__ == "__main__":
    import unittest
    unittest.main()
