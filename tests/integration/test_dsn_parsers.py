"""Our DSNs as bounce processors read them (issue 13 part 5).

relayd relays three messages that end in the three kinds of report a sender gets:
  hard     user@hard.example: the destination answers RCPT with 550 5.1.1 (user unknown):
           Action: failed, Status: 5.1.1;
  delayed  user@soft.example, NOTIFY=FAILURE,DELAY: every attempt gets 451 4.3.0; after
           delay_warning_time a "delayed" report (Action: delayed, Status: 4.3.0);
  expired  the same message once queue_lifetime is over: Action: failed, Status: 4.4.7.
The reports reach the senders' domain (an aiosmtpd sink), and four parsers we did not write
read them: flufl.bounce (python3-flufl.bounce), Mail::DeliveryStatus::BounceParser
(libmail-deliverystatus-bounceparser-perl), Sisimai (libsisimai-perl) and npm's
email-bounce-parser (tests/integration/bounce_parsers, installed by scripts/setup.sh).  Each
must find the recipient and classify the report as the fields say: the hard failure permanent
(Sisimai: userunknown, a hard bounce; not taken for Postfix's), the delay and the expiry
temporary.
Address: 127.0.34.x (this module only): relayd .1, destinations .25 (hard/soft) and .26 (the
senders' domain).
"""
import asyncio
import email
import json
import os
import subprocess
import threading
import unittest

from relaytest import RelayTestCase, wait_for

ADDR = "127.0.34.1"
DEST = "127.0.34.25"
SENDERS = "127.0.34.26"
HERE = os.path.dirname(os.path.abspath(__file__))
NPM_DIR = os.path.join(HERE, "bounce_parsers")


class Destination:
    """aiosmtpd: RCPT to hard.example gets 550 5.1.1, DATA for soft.example 451 4.3.0; every
    message it takes is kept (the senders' domain gets the DSNs)."""

    def __init__(self, addr):
        from aiosmtpd.controller import Controller
        self.messages = []
        self.lock = threading.Lock()
        dest = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address.endswith("@hard.example"):
                    return ("550 5.1.1 <%s>: Recipient address rejected: User unknown in "
                            "virtual mailbox table" % address)
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 Ok"

            async def handle_DATA(self, server, session, envelope):
                if any(r.endswith("@soft.example") for r in envelope.rcpt_tos):
                    return "451 4.3.0 Mailbox temporarily unavailable, try again later"
                with dest.lock:
                    dest.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content))
                return "250 2.0.0 Ok: kept"

        self.controller = Controller(Handler(), hostname=addr, port=2525, decode_data=False,
                                     ready_timeout=10)

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    def dsns(self):
        with self.lock:
            return [m for m in self.messages if m[0] in ("", "<>")]


class DsnParsersTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        """One relayd run makes the three reports; each test reads them."""
        try:
            cls.make_reports()
        except BaseException:
            if getattr(cls, "node", None) is not None:
                print("---- relayd log ----\n" + cls.node.log()[-6000:])
            cls.tearDownClass()
            raise

    @classmethod
    def make_reports(cls):
        cls.node = None
        cls.case = RelayTestCase()
        RelayTestCase.setUp(cls.case)
        cls.dest = Destination(DEST).start()
        cls.senders = Destination(SENDERS).start()
        routes = "hard.example=[%s]:2525, soft.example=[%s]:2525, senders.example=[%s]:2525" % (
            DEST, DEST, SENDERS)
        cls.node = cls.case.relayd(addr=ADDR, port=2525, transport=routes, retry_base="500ms",
                                   retry_max="1s", delay_warning_time="2s",
                                   queue_lifetime="8s", hostname="relay.example")
        cls.node.start()
        import smtplib
        with smtplib.SMTP(ADDR, 2525, timeout=20) as s:
            s.sendmail("alice@senders.example", ["user@hard.example"],
                       b"From: alice@senders.example\r\nTo: user@hard.example\r\n"
                       b"Subject: to a user that does not exist\r\n"
                       b"Message-ID: <hard-1@senders.example>\r\n\r\nhello\r\n")
            s.ehlo()
            s.mail("bob@senders.example")
            s.rcpt("user@soft.example", options=["NOTIFY=FAILURE,DELAY"])
            s.data(b"From: bob@senders.example\r\nTo: user@soft.example\r\n"
                   b"Subject: to a mailbox that is away\r\n"
                   b"Message-ID: <soft-1@senders.example>\r\n\r\nhello\r\n")
        wait_for(lambda: len(cls.senders.dsns()) >= 3, 40, "three DSNs at the senders' domain",
                 interval=0.2)
        cls.reports = {}
        for _from, rcpts, data in cls.senders.dsns():
            msg = email.message_from_bytes(data)
            status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
            action = status[0].get_payload()[1].get("Action") if status else None
            kind = ("hard" if rcpts == ["alice@senders.example"] else
                    "delayed" if action == "delayed" else "expired")
            cls.reports[kind] = data
            with open(os.path.join(cls.case.tmp, kind + ".eml"), "wb") as f:
                f.write(data)

    @classmethod
    def tearDownClass(cls):
        for part in ("node", "dest", "senders"):
            if getattr(cls, part, None) is not None:
                getattr(cls, part).stop()
        if getattr(cls, "case", None) is not None:
            RelayTestCase.tearDown(cls.case)

    def path(self, kind):
        return os.path.join(self.case.tmp, kind + ".eml")

    def run_json(self, argv, data=None):
        r = subprocess.run(argv, input=data, capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        return json.loads(r.stdout)

    def text_part(self, kind):
        msg = email.message_from_bytes(self.reports[kind])
        return msg.get_payload()[0].get_payload(decode=True)

    def test_fields_and_words(self):
        self.assertEqual(sorted(self.reports), ["delayed", "expired", "hard"])
        for kind, data in self.reports.items():
            msg = email.message_from_bytes(data)
            self.assertEqual(msg.get_content_type(), "multipart/report")
            fields = msg.get_payload()[1].get_payload()[1]
            want = {"hard": ("failed", "5.1.1", "smtp; 550 5.1.1 <user@hard.example>"),
                    "delayed": ("delayed", "4.3.0", "smtp; 451 4.3.0 Mailbox"),
                    "expired": ("failed", "4.4.7", "smtp; 451 4.3.0 Mailbox")}[kind]
            self.assertEqual((fields["Action"], fields["Status"]), want[:2], kind)
            self.assertTrue(fields["Diagnostic-Code"].startswith(want[2]), fields["Diagnostic-Code"])
            text = self.text_part(kind)
            # our own words: none of Postfix's phrases, by which parsers recognize Postfix
            for phrase in (b"This is the mail system", b"The mail system",
                           b"Undelivered Mail Returned to Sender", b"Mail Delivery System"):
                self.assertNotIn(phrase, data, kind)
            self.assertIn(b"Delivery report from the relay relay.example", text)
        self.assertIn(b"permanent failure (5.1.1)", self.text_part("hard"))
        self.assertNotIn(b"temporar", self.text_part("hard").lower())
        self.assertIn(b"queue lifetime over) (4.4.7)", self.text_part("expired"))

    def test_sisimai(self):
        got = {k: self.run_json(["perl", os.path.join(NPM_DIR, "sisimai.pl"), self.path(k)])
               for k in self.reports}
        for k, v in got.items():
            self.assertEqual(len(v), 1, (k, v))
            # a plain RFC 3464 report, not mistaken for Postfix's
            self.assertEqual(v[0]["smtpagent"], "RFC3464", (k, v))
        hard, delayed, expired = got["hard"][0], got["delayed"][0], got["expired"][0]
        self.assertEqual((hard["recipient"], hard["reason"], hard["softbounce"],
                          hard["deliverystatus"], hard["action"]),
                         ("user@hard.example", "userunknown", 0, "5.1.1", "failed"))
        self.assertEqual((delayed["recipient"], delayed["reason"], delayed["softbounce"],
                          delayed["deliverystatus"], delayed["action"]),
                         ("user@soft.example", "expired", 1, "4.3.0", "delayed"))
        self.assertEqual((expired["recipient"], expired["reason"], expired["softbounce"],
                          expired["deliverystatus"], expired["action"]),
                         ("user@soft.example", "expired", 1, "4.4.7", "failed"))

    def test_bounceparser(self):
        got = {k: self.run_json(["perl", os.path.join(NPM_DIR, "bounceparser.pl"), self.path(k)])
               for k in self.reports}
        hard = got["hard"]
        self.assertEqual(hard["is_bounce"], 1)
        self.assertEqual([(r["email"], r["status"], r["action"], r["std_reason"], r["smtp_code"])
                          for r in hard["reports"]],
                         [("user@hard.example", "5.1.1", "failed", "user_unknown", "550")])
        # a delay is not a bounce
        self.assertEqual(got["delayed"], {"is_bounce": 0, "reports": []})
        exp = got["expired"]
        self.assertEqual(exp["is_bounce"], 1)
        # Status 4.4.7 is not one it maps; its std_reason then comes from its own reading of
        # the destination's reply ("try again later" -> over_quota), not from our words
        self.assertEqual([(r["email"], r["status"], r["action"], r["smtp_code"], r["std_reason"])
                          for r in exp["reports"]],
                         [("user@soft.example", "4.4.7", "failed", "451", "over_quota")])

    def test_flufl_bounce(self):
        got = {k: self.run_json(["/usr/bin/python3", os.path.join(NPM_DIR, "run_flufl.py"),
                                 self.path(k)]) for k in self.reports}
        self.assertEqual(got["hard"], {"scan": ["user@hard.example"], "temporary": [],
                                       "permanent": ["user@hard.example"]})
        # a delay: a temporary failure, not a bounce to act on
        self.assertEqual(got["delayed"], {"scan": [], "temporary": ["user@soft.example"],
                                          "permanent": []})
        # an expiry is Action: failed: flufl counts the address as bouncing for good
        self.assertEqual(got["expired"], {"scan": ["user@soft.example"], "temporary": [],
                                          "permanent": ["user@soft.example"]})

    def test_email_bounce_parser(self):
        script = os.path.join(NPM_DIR, "parse.js")
        got = {k: self.run_json(["node", script], self.text_part(k)) for k in self.reports}
        self.assertEqual(got["hard"], {"bounce": True, "recipient": "user@hard.example",
                                       "code": {"basic": "550", "enhanced": "5.1.1"},
                                       "temporary": False, "permanent": True,
                                       "type": got["hard"]["type"]})
        for k in ("delayed", "expired"):
            v = got[k]
            self.assertEqual((v["bounce"], v["recipient"], v["code"], v["temporary"],
                              v["permanent"]),
                             (True, "user@soft.example", {"basic": "451", "enhanced": "4.3.0"},
                              True, False), (k, v))

if __name__ == "__main__":
    unittest.main()
