"""datasketch MinHash (bulk and per sentence) + MinHashLSH vs gpt2tune.data.dedupe on 20k sentences, in CPU seconds.

Not a test: datasketch is not a dependency; install it aside (pip install --target /tmp/dsk --no-deps datasketch).
scipy, which MinHashLSH needs only to choose bands itself, is stubbed: the bands are given (8 x 4, as ours).
"""
import sys
import time

sys.path.insert(0, "/tmp/dsk")
import types

from gpt2tune.data import dedupe, read, shingling

scipy = types.ModuleType("scipy"); integ = types.ModuleType("scipy.integrate"); integ.quad = lambda f, a, b: (0.0, 0.0)
scipy.integrate = integ; sys.modules["scipy"] = scipy; sys.modules["scipy.integrate"] = integ  # MinHashLSH's parameter search only
try:
    from datasketch import MinHash, MinHashLSH
except ImportError as e:
    print("import failed", e); raise
s = read.dedupe(read.read_sentences(sys.argv[1]))[:20000]
for rep in range(2):
    t = time.process_time()
    sh = [[" ".join(x).encode() for x in shingling.shingles(z)] for z in s]
    t_sh = time.process_time() - t
    t = time.process_time()
    mhs = MinHash.bulk(sh, num_perm=32)
    t_bulk = time.process_time() - t
    t = time.process_time()
    for b in sh[:5000]:
        m = MinHash(num_perm=32); m.update_batch(b)
    t_one = (time.process_time() - t) * len(sh) / 5000
    t = time.process_time()
    lsh = MinHashLSH(num_perm=32, params=(8, 4))
    for i, m in enumerate(mhs): lsh.insert(i, m)
    cands = sum(len(lsh.query(m)) for m in mhs)
    t_lsh = time.process_time() - t
    t = time.process_time(); nd = dedupe.near_duplicates(s); t_ours = time.process_time() - t
    print(f"20k sentences CPU s: shingles {t_sh:.2f}, datasketch bulk MinHash {t_bulk:.2f}, per-sentence update_batch {t_one:.2f}, LSH insert+query {t_lsh:.2f}; gpt2tune near_duplicates (all of it) {t_ours:.2f}", flush=True)
