"""relayd's HTTP endpoint: /healthz, /readyz, /metrics checked by `promtool check metrics`.

Address range: 127.0.11.x (this module only).
"""
import re
import smtplib
import subprocess
import urllib.error
import urllib.request

from relaytest import RelayTestCase, wait_for

ADDR = "127.0.11.1"
HTTP = "127.0.11.1:8025"


def get(path, method="GET"):
    req = urllib.request.Request("http://%s%s" % (HTTP, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class HttpTest(RelayTestCase):
    @staticmethod
    def _try(f):
        try:
            return f()
        except OSError:
            return None

    def test_health_ready_metrics(self):
        node = self.relayd(addr=ADDR, port=2525, http_listen=HTTP)
        node.start()
        # the HTTP server starts right after the SMTP listener: wait for it
        wait_for(lambda: self._try(lambda: get("/healthz")) == (200, "ok\n"), 10, "/healthz")
        wait_for(lambda: get("/readyz")[0] == 200, 10, "/readyz 200")
        with smtplib.SMTP(ADDR, 2525, timeout=10) as s:
            s.sendmail("a@b.test", ["c@d.test", "e@f.test"], b"Subject: m\r\n\r\nx\r\n")
            s.docmd("FROBNICATE")
        # the snapshot is refreshed every 0.5 s
        wait_for(lambda: "relay_messages_accepted_total 1\n" in get("/metrics")[1], 10,
                 "accepted counter")
        # dns_servers is a closed port: both recipients' lookups fail for now, both deferred
        wait_for(lambda: 'relay_delivery_recipients_total{result="deferred"} 2\n'
                 in get("/metrics")[1], 15, "two deferrals")
        code, text = get("/metrics")
        self.assertEqual(code, 200)
        for needle in ("relay_dns_lookups_total 2", 'relay_dns_failures_total{kind="temporary"} 2',
                       'relay_delivery_recipients_total{result="delivered"} 0',
                       'relay_ownership_member_state{node="node1",state="live"} 1',
                       'relay_ownership_domains{node="node1"} 2'):
            self.assertIn(needle, text)
        for needle in ('relay_messages_rejected_total{reason="bad_command"} 1',
                       "relay_queue_messages 1",
                       'relay_queue_recipients{state="queued"} 2',
                       "relay_proposal_latency_seconds_count 1",
                       "relay_smtp_sessions_total"):
            self.assertIn(needle, text)
        # the synced log writes (the message's, at least), both stages, cumulative buckets
        for stage in ("disk", "turn"):
            counts = [int(v) for v in re.findall(
                r'^relay_cluster_log_write_seconds_bucket\{stage="%s",le="[^"]+"\} (\d+)$' % stage,
                text, re.M)]
            self.assertEqual(len(counts), 15, stage)
            self.assertEqual(counts, sorted(counts), stage)
            self.assertGreaterEqual(counts[-1], 1, stage)
            self.assertIn('relay_cluster_log_write_seconds_count{stage="%s"} %d\n'
                          % (stage, counts[-1]), text)
        check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertEqual(get("/nope")[0], 404)
        self.assertEqual(get("/metrics", method="POST")[0], 405)
        self.assertEqual(node.stop(), 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
