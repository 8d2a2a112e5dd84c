#!/usr/bin/env python3
"""make_abuse_corpus.py: writes the seed corpora of fuzz_cluster_frame, fuzz_admin_request and
fuzz_dsn (tests/fuzz/corpus/NAME/), protobuf encoded by hand (proto/*.proto field numbers), so
the fuzzers start from every request kind and message type.  Run from anywhere; rewrites the
seed files it names, leaves others (crashes found later, minimized inputs) alone."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def vi(field, n):
    return varint(field << 3) + varint(n)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- admin requests (admin.proto AdminRequest) ----
Q1, Q2, Q3 = "1A00000000000000000001", "1A00000000000000000002", "1A00000000000000000003"
admin = {
    "status": ld(1, b""),
    "list-all": ld(2, b""),
    "list-deferred-domain": ld(2, ld(1, "deferred") + ld(2, "d1.test") + vi(3, 5)),
    "list-bad-state": ld(2, ld(1, "sideways") + vi(3, 4000000000)),
    "show": ld(3, ld(1, Q1)),
    "show-long-id": ld(3, ld(1, "F" * 300)),
    "delete-one-and-unknown": ld(4, ld(1, Q3) + ld(1, "NOSUCHID")),
    "delete-all-deferred": ld(4, vi(2, 1)),
    "change-hold": ld(5, ld(1, "hold") + ld(2, Q2)),
    "change-release": ld(5, ld(1, "release") + ld(2, Q2)),
    "change-retry-all": ld(5, ld(1, "retry") + vi(3, 1)),
    "change-bad-action": ld(5, ld(1, "explode") + ld(2, Q1)),
    "node-add": ld(6, ld(1, "n9") + ld(2, "127.0.0.1:7401")),
    "node-add-bad": ld(6, ld(1, "-" * 100) + ld(2, "nohostport")),
    "node-remove": ld(7, ld(1, "n9")),
    "leader-transfer": ld(8, ld(1, "n2") + ld(2, "fuzz1")),
    "drain-long-id": ld(9, ld(1, "z" * 300)),
    "drain-self": ld(9, b""),
    "empty": b"",
    "garbage": b"\xff\xff\xff\xff\x0f",
    "missing-required": ld(3, b""),
}
for k, v in admin.items():
    write("fuzz_admin_request", k, v)


# ---- cluster frames: mode byte, then the peer's bytes ----
def raft_msg(t, frm=2, to=1, term=2, extra=b""):
    return vi(1, t) + vi(4, frm) + vi(5, to) + vi(6, term) + extra


entry = ld(12, vi(1, 2) + vi(2, 2) + vi(3, 0) + ld(4, b"x" * 16))
conf = ld(15, ld(1, varint(1) + varint(2) + varint(3)))
raft = {
    "app": raft_msg(0, extra=vi(7, 1) + vi(8, 1) + vi(9, 2) + entry),
    "app-resp-reject": raft_msg(1, extra=vi(2, 1) + vi(8, 5) + vi(10, 3) + vi(11, 1)),
    "vote": raft_msg(2, term=3, extra=vi(7, 1) + vi(8, 1)),
    "vote-resp": raft_msg(3, term=2),
    "prevote": raft_msg(4, term=3, extra=vi(7, 1) + vi(8, 9)),
    "prevote-resp": raft_msg(5, term=3),
    "heartbeat": raft_msg(6, extra=vi(9, 1)),
    "heartbeat-resp": raft_msg(7),
    "snap": raft_msg(8, extra=vi(13, 10) + vi(14, 2) + conf + ld(16, b"desc") + vi(17, 4)
                     + vi(18, 0)),
    "timeout-now": raft_msg(9, extra=vi(3, 1)),
    "snap-resp": raft_msg(10, extra=vi(8, 10) + vi(18, 4)),
    "bad-type": raft_msg(99),
    "huge-term": raft_msg(0, term=2 ** 63, extra=vi(8, 2 ** 64 - 1) + vi(9, 2 ** 64 - 1)),
}
for k, v in raft.items():
    write("fuzz_cluster_frame", "raft-follower-" + k, b"\x01\x00" + v)
    write("fuzz_cluster_frame", "raft-candidate-" + k, b"\x01\x01" + v)
    frame = ld(1, "n2") + ld(2, "n1") + ld(3, "") + vi(4, 1) + ld(5, v)
    write("fuzz_cluster_frame", "frame-" + k, b"\x00" + frame)

# forwarded proposals (relay.proto Command)
rcpt = ld(1, "x@one.test") + vi(2, 2)
accept = (ld(1, "1A00000000000000000009") + ld(2, "s@src.test") + ld(3, rcpt)
          + ld(4, b"Subject: f\r\n\r\nbody\r\n") + vi(5, 1700000000000) + vi(14, 0))
commands = {
    "accept": ld(1, accept),
    "outcome-delivered": ld(2, ld(1, "1A00000000000000000001") + vi(2, 0) + vi(3, 0)
                            + vi(4, 1700000000001) + ld(6, "250 ok") + vi(9, 0)),
    "outcome-deferred": ld(2, ld(1, "1A00000000000000000001") + vi(2, 1) + vi(3, 1)
                           + vi(4, 1700000000001) + vi(5, 1700000060000)),
    "outcome-failed-dsn": ld(2, ld(1, "1A00000000000000000001") + vi(2, 0) + vi(3, 2)
                             + vi(4, 1700000000001) + ld(8, "5.1.1") + ld(10, accept)),
    "outcome-bad-index": ld(2, ld(1, "1A00000000000000000001") + vi(2, 99) + vi(3, 0)
                            + vi(4, 1)),
    "delete": ld(3, ld(1, "1A00000000000000000001")),
    "member-draining": ld(4, ld(1, "n1") + vi(2, 1) + vi(3, 5)),
    "renew": ld(5, ld(1, "n1") + vi(2, 5) + vi(3, 0)),
    "hold": ld(6, ld(1, "1A00000000000000000001")),
    "release": ld(7, ld(1, "1A00000000000000000001") + vi(2, 5)),
    "retry": ld(8, ld(1, "1A00000000000000000001") + vi(2, 5)),
    "peer": ld(12, ld(1, "n4") + ld(2, "127.0.0.4:7401") + vi(3, 0)),
}
for k, v in commands.items():
    write("fuzz_cluster_frame", "command-" + k, b"\x02" + v)
write("fuzz_cluster_frame", "snapshot-fetch",
      b"\x03" + vi(1, 7) + vi(2, 1) + vi(3, 10) + vi(4, 1) + ld(5, b"key") + vi(6, 0))
write("fuzz_cluster_frame", "snapshot-chunk",
      b"\x03" + vi(1, 7) + vi(2, 1) + vi(3, 0) + vi(4, 10)
      + ld(9, vi(1, 1) + ld(2, b"k") + vi(3, 5) + vi(4, 0) + ld(5, b"hello")) + vi(10, 1))


# ---- DSN builder: flags, orig_max/64, then NUL-separated fields, then the original ----
def dsn(flags, omax, fields, orig):
    return bytes([flags, omax]) + b"\0".join(f.encode() for f in fields) + b"\0" + orig


orig = (b"Received: from x\r\nSubject: hello\r\nFrom: s@src.test\r\n\r\n"
        + b"THE-BODY-OF-THE-MESSAGE-SHOULD-NOT-COME-BACK-WITH-HDRS\r\n.line\r\n")
r1 = ["r@one.test", "rfc822;r@one.test", "5.1.1", "mx.one.test", "550 5.1.1 no such user"]
dsns = {
    "failed-default": dsn(0x00, 0, ["s@src.test", "env+2Bid"] + r1, orig),
    "failed-hdrs": dsn(0x10, 0, ["s@src.test", ""] + r1, orig),
    "failed-full-small-max": dsn(0x08, 1, ["s@src.test", ""] + r1, orig),
    "delayed-two": dsn(0x21, 0, ["s@src.test", ""] + r1 + ["t@two.test", "", "4.4.1", "", ""],
                       orig),
    "delivered-four": dsn(0x62, 0, ["s@src.test", ""] + r1 * 4, orig),
    "header-injection": dsn(0x00, 0, ["s@src.test\r\nBcc: x@evil.test", ""] + r1, orig),
    "no-header-end": dsn(0x10, 0, ["s@src.test", ""] + r1, b"just text, no headers"),
    "boundary-in-body": dsn(0x08, 0, ["s@src.test", ""] + r1,
                            orig + b"--=_1A23D8D1A1DA7E9FE561B1@relay.test\r\n"),
}
for k, v in dsns.items():
    write("fuzz_dsn", k, v)
print("corpora written under", os.path.join(HERE, "corpus"))
