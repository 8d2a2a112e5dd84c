# bounceparser.pl FILE: what Mail::DeliveryStatus::BounceParser makes of a bounce, as JSON
# (test_dsn_parsers.py).
use strict; use warnings; use Mail::DeliveryStatus::BounceParser; use JSON::PP;
open(my $fh, '<', $ARGV[0]) or die; 
my $b = eval { Mail::DeliveryStatus::BounceParser->new($fh) };
die "parse: $@" unless $b;
my @r;
for my $r ($b->reports) {
  push @r, { map { $_ => scalar $r->get($_) } qw(email std_reason reason action status host smtp_code) };
}
print JSON::PP->new->canonical->encode({ is_bounce => $b->is_bounce ? 1 : 0, reports => \@r }), "\n";
