"""Data preparation at 40k, 400k and 4M sentences: time and peak RSS, cold and warm cache; near-dup grouping time.

Not a test: run it by hand (it writes its corpora and caches under /tmp/gpt2tune-bench, ~400 MB) and read the
table it prints. The big corpora are the Japan corpus plus recombined sentences (the first words of one sentence
and the rest of another: new text, realistic lengths), 1% of them with a near-duplicate twin.

    PYTHONPATH=src python benchmarks/data_prep.py --japan ../shared/data/japan_wiki.txt [--sizes 40k,400k,4M]
        [--first-step | --first-step-only] [--baseline /work/wt/base/src] [--formats-only]

--formats-only: the same sentences from the .txt file and from a Parquet copy (one row a line), each prepared
cold (empty cache): time and peak RSS side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("/tmp/gpt2tune-bench")
SIZES = {"40k": 40_000, "400k": 400_000, "4M": 4_000_000}

CHILD = r"""
import json, resource, sys, tempfile, time
t0 = time.perf_counter()
from gpt2tune.data import cache as datacache
from gpt2tune.model.builtin import gpt2_tokenizer
tok = gpt2_tokenizer()
tok.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
t1 = time.perf_counter()
split = datacache.cached_split(sys.argv[1], "text", 0.1, 42, 2000, True, sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"split_s": t2 - t1, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}),
      flush=True)  # progress, for a run that is stopped before the end
train, val = split.blocks(tok, 128, sys.argv[2])
train.target_counts()  # what the training loop reads first
t3 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the forked workers (their RSS counts pages shared with us)
print(json.dumps({"split_s": t2 - t1, "blocks_s": t3 - t2, "prepare_s": t3 - t1, "hit": split.hit and train.hit,
                  "cpu_s": ru.ru_utime + ru.ru_stime, "workers_cpu_s": kids.ru_utime + kids.ru_stime,
                  "workers_rss_gb": kids.ru_maxrss / 2**20,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "info": {
                  k: v for k, v in split.info.items() if k not in ("near_examples", "settings")},
                  "blocks": len(train), "tokens": int(train.lengths.sum())}))
"""

BASELINE = r"""
import json, resource, sys, tempfile, time
from gpt2tune import data  # the baseline: an older version, before the layout
from gpt2tune.model.builtin import gpt2_tokenizer
tok = gpt2_tokenizer(tempfile.mkdtemp())
tok.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
t1 = time.perf_counter()
tr, va = data.split(data.read_sentences(sys.argv[1]), 0.1, 42)
b = data.pack(data.encode(tok, tr, tok.bos_token_id, tok.eos_token_id, 128), 128, tok.pad_token_id)
v = data.pack(data.encode(tok, va, tok.bos_token_id, tok.eos_token_id, 128), 128, tok.pad_token_id)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"prepare_s": time.perf_counter() - t1, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "rss_gb": ru.ru_maxrss / 2**20}))
"""

GROUPING = r"""
import json, sys, time
import resource
from gpt2tune.data.dedupe import near_duplicates
from gpt2tune.data.read import dedupe, read_sentences
unique = dedupe(read_sentences(sys.argv[1]))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
t, c = time.perf_counter(), time.process_time()
nd = near_duplicates(unique)
print(json.dumps({"sentences": len(unique), "seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "groups": nd.groups, "grouped": nd.grouped, "rss_gb_before": rss,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def make_corpus(japan: Path, n: int) -> Path:
    """The Japan corpus, then recombined sentences (1% with a near-duplicate twin) up to n lines."""
    out = ROOT / f"corpus-{n}.txt"
    if out.is_file():
        return out
    base = [x for x in japan.read_text(encoding="utf-8").splitlines() if x.strip()]
    words = [x.split() for x in base]
    rng = random.Random(0)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        written = 0
        for line in base[:n]:
            f.write(line + "\n")
            written += 1
        while written < n:
            a, b = rng.choice(words), rng.choice(words)
            cut_a, cut_b = rng.randint(1, max(1, len(a) - 1)), rng.randint(0, max(0, len(b) - 2))
            s = " ".join(a[:cut_a] + b[cut_b:])
            f.write(s + "\n")
            written += 1
            if rng.random() < 0.01 and written < n:  # a twin: another number, other case
                f.write(s.upper().replace(" ", f" {rng.randint(1, 99)} ", 1) + "\n")
                written += 1
    tmp.rename(out)
    return out


def child(code: str, *args: str, src: str) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--japan", type=Path, required=True)
    ap.add_argument("--sizes", default="40k,400k,4M")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--baseline", help="src directory of the previous version, measured on 40k and 400k")
    ap.add_argument("--first-step", action="store_true", help="also time `train --max-steps 1` at the largest size")
    ap.add_argument("--first-step-only", action="store_true", help="only the first-step measurement")
    ap.add_argument("--formats-only", action="store_true", help="only .txt vs Parquet, cold, at each size")
    args = ap.parse_args()
    ROOT.mkdir(exist_ok=True)
    if args.formats_only:
        return compare_formats(args)
    rows = []
    for name in [] if args.first_step_only else args.sizes.split(","):
        corpus = make_corpus(args.japan, SIZES[name])
        cache = ROOT / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        cold = child(CHILD, str(corpus), str(cache), src=args.src)
        warm = child(CHILD, str(corpus), str(cache), src=args.src)
        row = {"size": name, "cold": cold, "warm": warm}
        if name == "400k":
            row["grouping"] = child(GROUPING, str(corpus), src=args.src)
        if args.baseline and name != "4M":
            row["baseline"] = child(BASELINE, str(corpus), src=args.baseline)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.first_step or args.first_step_only:
        big = make_corpus(args.japan, SIZES[args.sizes.split(",")[-1]])
        model = ROOT / "tiny"
        if not model.is_dir():
            subprocess.run([sys.executable, "-c", f"from gpt2tune.model.builtin import make_gpt2; make_gpt2('{model}')"],
                           check=True, env={**os.environ, "PYTHONPATH": args.src})
        cache = ROOT / "cache-first-step"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(ROOT / "run", ignore_errors=True)
        print(json.dumps(first_step(model, big, cache, args.src)), flush=True)
    print_table(rows)


def parquet_copy(corpus: Path) -> Path:
    """The corpus as a Parquet file, one row a line (a text column), written a million lines at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = corpus.with_suffix(".parquet")
    if out.is_file():
        return out
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(out.with_suffix(".tmp"), schema) as writer, corpus.open(encoding="utf-8") as f:
        while lines := [line.rstrip("\n") for _, line in zip(range(1 << 20), f)]:
            writer.write_table(pa.table({"text": lines}, schema=schema))
    out.with_suffix(".tmp").rename(out)
    return out


def compare_formats(args) -> None:
    """Cold preparation of the same sentences from .txt and from Parquet."""
    print("| sentences | format | file MB | split s | prepare s | CPU s | peak RSS GB | unique | blocks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.sizes.split(","):
        txt = make_corpus(args.japan, SIZES[name])
        for path in (txt, parquet_copy(txt)):
            cache = ROOT / f"cache-{name}-{path.suffix[1:]}"
            shutil.rmtree(cache, ignore_errors=True)
            r = child(CHILD, str(path), str(cache), src=args.src)
            print(f"| {name} | {path.suffix} | {path.stat().st_size / 1e6:.0f} | {r['split_s']:.1f} | "
                  f"{r['prepare_s']:.1f} | {r['cpu_s'] + r['workers_cpu_s']:.1f} | {r['rss_gb']:.2f} | "
                  f"{r['info']['unique']:,} | {r['blocks']:,} |", flush=True)
            shutil.rmtree(cache, ignore_errors=True)


def first_step(model: Path, data: Path, cache: Path, src: str) -> dict:
    """`gpt2tune train` on data with an empty cache, as a user runs it: seconds from starting the process to
    its "first step done" line (read, dedupe, group, split, tokenize, pack, load the model, one step)."""
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(ROOT / "run", ignore_errors=True)
    t = time.perf_counter()
    p = subprocess.Popen(["/usr/bin/time", "-f", "max RSS %M kB", sys.executable, "-m", "gpt2tune", "train",
                          "--model", str(model), "--data", str(data), "--out", str(ROOT / "run"), "--max-steps", "1",
                          "--samples", "0", "--cache-dir", str(cache)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": src})
    seen, first, tail = None, "", []
    for line in p.stdout:  # type: ignore[union-attr]
        tail = (tail + [line.rstrip()])[-30:]
        if "sentences," in line and not first:
            first = line.strip()
        if "first step done" in line and seen is None:
            seen = time.perf_counter() - t
    rc = p.wait()
    rss = next((int(x.split()[2]) / 2**20 for x in tail if x.startswith("max RSS")), None)
    return {"first_step_s": seen, "process_s": time.perf_counter() - t, "rc": rc, "peak_rss_gb": rss,
            "first_line": first, **({"tail": tail} if rc or seen is None else {})}


def print_table(rows: list[dict]) -> None:
    print("\n| sentences | unique | cold: wall s (split) | cold: CPU s | cold: peak RSS GB | warm: wall s | "
          "warm: peak RSS GB | before: wall s / CPU s / GB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c, w, b = r["cold"], r["warm"], r.get("baseline")
        before = f"{b['prepare_s']:.1f} / {b.get('cpu_s', 0):.1f} / {b['rss_gb']:.2f}" if b else "-"
        print(f"| {r['size']} | {c['info']['unique']:,} | {c['prepare_s']:.1f} ({c['split_s']:.1f}) | "
              f"{c.get('cpu_s', 0):.1f} | {c['rss_gb']:.2f} | {w['prepare_s']:.2f} | {w['rss_gb']:.2f} | {before} |")


if __name__ == "__main__":
    main()
