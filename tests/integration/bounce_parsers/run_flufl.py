"""run_flufl.py FILE: what flufl.bounce (python3-flufl.bounce) makes of a bounce, as JSON
(test_dsn_parsers.py): the addresses it finds, and all_failures' temporary and permanent sets."""
import email
import json
import sys

from flufl.bounce import all_failures, scan_message

with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f)
temporary, permanent = all_failures(msg)
print(json.dumps({"scan": sorted(a.decode() for a in scan_message(msg)),
                  "temporary": sorted(a.decode() for a in temporary),
                  "permanent": sorted(a.decode() for a in permanent)}))
