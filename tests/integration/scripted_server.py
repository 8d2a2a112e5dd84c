"""scripted_server: a small SMTP server for the destination behaviours real servers will not
show on demand.  One thread per connection; each connection follows `mode`:

  ok          a plain ESMTP server (no PIPELINING), keeps every message
  greet421    "421 4.3.2 ..." as greeting, then closes
  drop_data   takes the envelope, reads part of the body after 354, then closes the socket
  slow        like ok, but waits `delay` seconds before every reply
  fail_first  like ok, but the first `fails` MAIL commands get 451 4.3.0 (then 250)
  always451   every MAIL gets 451 4.3.0
  rcpt550     every RCPT gets "550 5.1.1 <addr>: no such user"
  badtls      offers STARTTLS, answers 220 to it, then sends a TLS alert and closes (a broken
              TLS stack); without STARTTLS it is an ok server
  trickle     like ok, but every reply (the greeting first) goes out one byte every `delay`
              seconds: a hostile server holding a client's slot
  stalltls    offers STARTTLS, answers 220 to it, then reads the ClientHello and never answers

`connections` counts accepted connections, `max_active` the most open at once (as this server's
threads see them: a connection the client already closed may still count for a moment);
`max_txn` the most mail transactions open at once, counted from MAIL's 250 until the reply to
the end of data is about to be sent (exact: the client can only start another transaction
after that reply); `messages` keeps (mail_from, [rcpts], bytes).
"""
import socket
import threading
import time


class ScriptedServer:
    def __init__(self, addr, port=25, mode="ok", delay=0.0, fails=1, name="scripted.test"):
        self.addr, self.port, self.mode, self.delay, self.name = addr, port, mode, delay, name
        self.fails_left = fails
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.txn = 0
        self.max_txn = 0
        self.messages = []
        self.lock = threading.Lock()
        self.stopping = False
        self.clients = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        with self.lock:
            clients = list(self.clients)
        for c in clients:       # nothing of this server outlives stop()
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.clients.add(c)
                self.connections += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        f = c.makefile("rb")

        def say(line):
            if self.mode == "slow" and self.delay:
                time.sleep(self.delay)
            if self.mode == "trickle":
                for b in line.encode() + b"\r\n":
                    if self.stopping:
                        return
                    c.sendall(bytes([b]))
                    time.sleep(self.delay)
                return
            c.sendall(line.encode() + b"\r\n")

        in_txn = [False]

        def txn(on):
            with self.lock:
                if on and not in_txn[0]:
                    self.txn += 1
                    self.max_txn = max(self.max_txn, self.txn)
                elif not on and in_txn[0]:
                    self.txn -= 1
                in_txn[0] = on

        try:
            if self.mode == "greet421":
                c.sendall(b"421 4.3.2 %s service not available\r\n" % self.name.encode())
                return
            say("220 %s ESMTP scripted" % self.name)
            mail_from, rcpts = None, []
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode("utf-8", "replace").strip()
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    tls = "250-STARTTLS\r\n" if self.mode in ("badtls", "stalltls") else ""
                    say("250-%s\r\n%s250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES"
                        % (self.name, tls))
                elif verb == "STARTTLS" and self.mode == "badtls":
                    say("220 2.0.0 Ready to start TLS")
                    f.read1(4096) if hasattr(f, "read1") else None   # the ClientHello
                    c.sendall(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
                    return
                elif verb == "STARTTLS" and self.mode == "stalltls":
                    say("220 2.0.0 Ready to start TLS")
                    while not self.stopping and c.recv(4096):   # the ClientHello, unanswered
                        pass
                    return
                elif verb == "HELO":
                    say("250 %s" % self.name)
                elif verb == "MAIL":
                    fail = self.mode == "always451"
                    if self.mode == "fail_first":
                        with self.lock:
                            if self.fails_left > 0:
                                self.fails_left -= 1
                                fail = True
                    if fail:
                        say("451 4.3.0 try again later")
                        continue
                    mail_from = cmd[cmd.index(":") + 1:].split()[0].strip("<>")
                    rcpts = []
                    txn(True)
                    say("250 2.1.0 Ok")
                elif verb == "RCPT":
                    addr = cmd[cmd.index(":") + 1:].split()[0].strip("<>")
                    if self.mode == "rcpt550":
                        say("550 5.1.1 <%s>: no such user" % addr)
                        continue
                    rcpts.append(addr)
                    say("250 2.1.5 Ok")
                elif verb == "DATA":
                    say("354 End data with <CR><LF>.<CR><LF>")
                    data = b""
                    while True:
                        l2 = f.readline()
                        if not l2:
                            return
                        if self.mode == "drop_data" and len(data) > 10:
                            c.shutdown(socket.SHUT_RDWR)
                            return
                        if l2 == b".\r\n":
                            break
                        if l2.startswith(b"."):
                            l2 = l2[1:]
                        data += l2
                    with self.lock:
                        self.messages.append((mail_from, rcpts, data))
                    txn(False)
                    say("250 2.0.0 Ok: queued")
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    txn(False)
                    say("250 2.0.0 Ok")
                elif verb == "NOOP":
                    say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    return
                else:
                    say("502 5.5.2 command not recognized")
        except OSError:
            pass
        finally:
            txn(False)
            with self.lock:
                self.active -= 1
                self.clients.discard(c)
            try:
                c.close()
            except OSError:
                pass
