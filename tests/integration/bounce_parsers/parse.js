// parse.js: runs npm's email-bounce-parser on the text part of a bounce (read from stdin, as
// its README asks: the text body, not the MIME message) and prints what it found as JSON.
// Used by tests/integration/test_dsn_parsers.py.
"use strict";
const EmailBounceParser = require("email-bounce-parser");

let text = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => { text += d; });
process.stdin.on("end", () => {
  const r = new EmailBounceParser().read(text);
  const e = (r.data && r.data.error) || {};
  process.stdout.write(JSON.stringify({
    bounce: r.bounce,
    recipient: r.data ? r.data.recipient : null,
    code: e.code || null,
    temporary: e.temporary,
    permanent: e.permanent,
    type: e.type || null,
  }) + "\n");
});
