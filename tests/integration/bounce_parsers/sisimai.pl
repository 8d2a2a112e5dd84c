# sisimai.pl FILE: what Sisimai (libsisimai-perl) makes of a bounce, as JSON (test_dsn_parsers.py).
use strict; use warnings; use Sisimai; use JSON::PP;
my $v = Sisimai->make($ARGV[0], 'delivered' => 1) || [];
my @out;
for my $e (@$v) {
  push @out, { recipient => $e->recipient->address, reason => $e->reason, softbounce => $e->softbounce+0,
    deliverystatus => $e->deliverystatus, action => $e->action, smtpagent => $e->smtpagent,
    diagnosticcode => $e->diagnosticcode, replycode => $e->replycode };
}
print JSON::PP->new->canonical->encode(\@out), "\n";
