#!/usr/bin/env python3
"""check_layout.py: the house rules of the source tree (README "Layout"), checked on every build.

  1. No source file is longer than LINE_MAX lines, except the ones in EXEMPT (each with why).
  2. The ladder: node/* may use cluster/ and storage/; cluster/ may use storage/; nothing in
     cluster/ or storage/ includes a header that lives in node/, and storage/ includes nothing of
     cluster/.
  3. No include cycle between units.  A unit is one module: X.c with X.h, plus the files that
     include X's private header X_int.h (a module split along its seams is one unit).
  4. Each outside library is used from one place: LIBRARY_HOMES maps an include prefix to the
     only files that may include it.
  5. No call cycle between units: from `nm` of the static libraries given on the command line,
     unit A -> unit B when an object of A uses a symbol an object of B defines.

  6. Each integration test module has its own loopback block 127.0.N.x.

usage: check_layout.py SOURCE_DIR [LIB.a ...]
"""
import os, re, subprocess, sys
from collections import defaultdict

LINE_MAX = 1500
# Files allowed past LINE_MAX, and why.
EXEMPT = {
    'cluster/raft.c': 'the Raft core stays whole, as etcd\'s raft.go (issue 10)',
}
ROOTS = ['node', 'cluster', 'storage']
LIBRARY_HOMES = {
    # store_rocksdb_trash.cc: the one option RocksDB's C API lacks (an SstFileManager)
    'rocksdb/': {'storage/store_rocksdb.c', 'storage/store_rocksdb_trash.cc'},
    # the admin endpoint (transport_admin.c) and its plumbing (transport_nng.h,
    # transport_ep.c); peer frames (transport.c) no longer use NNG
    'nng/': {'cluster/transport_admin.c', 'cluster/transport_ep.c', 'cluster/transport_nng.h'},
    # node/crypto.c: DKIM's keys, signatures and SHA-256 (issue 13); node/tls.c: SMTP's TLS;
    # cluster/transport.c and transport_tls.c: the peer transport's mutual TLS
    'openssl/': {'node/tls.c', 'node/crypto.c', 'cluster/transport.c',
                 'cluster/transport_tls.c'},
    'ares': {'node/delivery/resolver.c'},
    'curl/': {'node/delivery/https_fetch.c'},
    'microhttpd': {'node/admin/http.c'},
}

top = sys.argv[1]
libs = sys.argv[2:]
fail = []

files = []
for r in ROOTS:
    for d, _, fs in os.walk(os.path.join(top, r)):
        for f in fs:
            if f.endswith(('.c', '.cc', '.h')):
                files.append(os.path.relpath(os.path.join(d, f), top))
by_name = {}
for f in files:
    by_name.setdefault(os.path.basename(f), []).append(f)

# 1. length
for f in sorted(files):
    n = sum(1 for _ in open(os.path.join(top, f), errors='replace'))
    if n > LINE_MAX and f not in EXEMPT:
        fail.append('%s: %d lines (over %d): split it along its seams' % (f, n, LINE_MAX))

# includes
inc_re = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
includes = {}
for f in files:
    includes[f] = [i for i in inc_re.findall(open(os.path.join(top, f), errors='replace').read())]

def header_path(name):
    c = by_name.get(os.path.basename(name), [])
    return c[0] if len(c) == 1 else None

# 2. ladder
for f in files:
    top_dir = f.split('/')[0]
    for i in includes[f]:
        h = header_path(i)
        if h is None:
            continue
        hd = h.split('/')[0]
        if top_dir in ('cluster', 'storage') and hd == 'node':
            fail.append('%s includes %s: cluster/ and storage/ must not use node/' % (f, h))
        if top_dir == 'storage' and hd == 'cluster':
            fail.append('%s includes %s: storage/ must not use cluster/' % (f, h))

# 4. one home per outside library
sys_re = re.compile(r'^\s*#\s*include\s+<([^>]+)>', re.M)
for f in files:
    for i in sys_re.findall(open(os.path.join(top, f), errors='replace').read()):
        for prefix, homes in LIBRARY_HOMES.items():
            if i.startswith(prefix) and f not in homes:
                fail.append('%s includes <%s>: only %s may' % (f, i, ', '.join(sorted(homes))))

# units
def stem(f):
    return os.path.splitext(f)[0]
unit = {f: stem(f) for f in files}
for f in files:
    for i in includes[f]:
        h = header_path(i)
        if h and h.endswith('_int.h'):
            owner = h[:-len('_int.h')]
            if f != h:
                unit[f] = owner
    if f.endswith('_int.h'):
        unit[f] = f[:-len('_int.h')]
# a header X.h belongs to the unit of X.c (or X.cc)
for f in files:
    if f.endswith('.h') and not f.endswith('_int.h'):
        for c in (f[:-2] + '.c', f[:-2] + '.cc'):
            if c in unit:
                unit[f] = unit[c]

def cycles(edges, what):
    # Tarjan's SCC; report every component with more than one unit
    index = {}
    low = {}
    stack, on = [], set()
    out = []
    counter = [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in list(edges):
        if v not in index:
            strong(v)
    for comp in out:
        fail.append('%s cycle between units: %s' % (what, ', '.join(comp)))

# 3. include graph between units
iedges = defaultdict(set)
for f in files:
    for i in includes[f]:
        h = header_path(i)
        if h and unit[h] != unit[f]:
            iedges[unit[f]].add(unit[h])
cycles(iedges, 'include')

# 5. call graph between units (objects of the libraries)
if libs:
    defined = {}
    undef = defaultdict(set)
    for lib in libs:
        out = subprocess.run(['nm', '-A', '--defined-only', lib], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r'^(.*?):(.*?\.o):\s*[0-9a-f]*\s+([TDBR])\s+(\S+)$', line)
            if m:
                defined[m.group(4)] = m.group(2)
        out = subprocess.run(['nm', '-A', '--undefined-only', lib], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r'^(.*?):(.*?\.o):\s+U\s+(\S+)$', line)
            if m:
                undef[m.group(2)].add(m.group(3))
    def obj_unit(o):
        src = o[:-len('.o')]
        for f in files:
            if f.endswith(('.c', '.cc')) and os.path.basename(f) == src:
                return unit[f]
        return None
    cedges = defaultdict(set)
    for o, syms in undef.items():
        a = obj_unit(o)
        for s in syms:
            d = defined.get(s)
            if d is None or a is None:
                continue
            b = obj_unit(d)
            if b and b != a:
                cedges[a].add(b)
    cycles(cedges, 'call')

# 6. each integration test module owns its loopback block 127.0.N.x (N > 0), so modules run in
#    parallel (ctest -j2) without taking each other's addresses
owners = defaultdict(set)
itdir = os.path.join(top, 'tests', 'integration')
for f in sorted(os.listdir(itdir)):
    if f.startswith('test_') and f.endswith('.py'):
        for n in set(re.findall(r'127\.0\.(\d+)\.', open(os.path.join(itdir, f)).read())):
            if n != '0':
                owners[n].add(f)
for n, fs in sorted(owners.items()):
    if len(fs) > 1:
        fail.append('127.0.%s.x is used by %s: give each test module its own block' %
                    (n, ', '.join(sorted(fs))))

for f in fail:
    print('FAIL', f)
print('layout: %d files, %d units checked, %d libraries; %s' %
      (len(files), len(set(unit.values())), len(libs), 'ok' if not fail else '%d problems' % len(fail)))
sys.exit(1 if fail else 0)
