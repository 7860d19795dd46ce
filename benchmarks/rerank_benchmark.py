"""The asymmetric re-ranking (search/asymmetric.py): jitted against the NumPy lookup tables.

Example (the figures in benchmarks/RERANK_RESULTS.md):

  .venv/bin/python benchmarks/rerank_benchmark.py --database_sizes=70000,1000000 \
      --bits=48,64 --depths=10,100,1000 --markdown=benchmarks/RERANK_RESULTS.md

For each database size and code length: random uniform database codes, and continuous queries
made from database codes with a tenth of their signs flipped and random confidences (tanh of
a normal), so that the Hamming candidates are near neighbours, as a shopper's photo's are. Per
candidate depth c it times, after a warm-up call (compilation excluded), best of ``--repeats``
interleaved runs: the Hamming scan of the top c (``HammingIndex.search``), the re-ranking of those
candidates jitted (``asymmetric.rerank``) and in NumPy (``asymmetric.rerank_tables``), and the
whole ``search_asymmetric``; and checks that the two re-rankings agree exactly (distances and
positions). Queries/s = queries / seconds.
"""
from __future__ import annotations

import argparse
import json
import time

import jax

import numpy as np

from deephash_jax import mesh as mesh_lib
from deephash_jax.search import asymmetric
from deephash_jax.search import packing
from deephash_jax.search.index import HammingIndex


def _int_list(text):
  return [int(float(v)) for v in text.split(",") if v]


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--database_sizes", type=_int_list, default=[70_000, 1_000_000])
  parser.add_argument("--bits", type=_int_list, default=[48])
  parser.add_argument("--depths", type=_int_list, default=[10, 100, 1000])
  parser.add_argument("--num_queries", type=int, default=1000)
  parser.add_argument("--k", type=int, default=10, help="results kept per query")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--flip", type=float, default=0.1, help="share of a query's signs flipped")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--markdown", default=None, help="also write the table to this file")
  parser.add_argument("--json", default=None, help="also write the rows (and the devices) to "
                      "this JSON file")
  return parser.parse_args(argv)


def _queries(rng, db_bits, num_queries, flip):
  signs = np.where(db_bits[rng.integers(0, len(db_bits), num_queries)], 1.0, -1.0)
  signs *= np.where(rng.random(signs.shape) < flip, -1.0, 1.0)
  return (signs * np.abs(np.tanh(rng.normal(size=signs.shape)))).astype(np.float32)


def _best(fns, repeats):
  """Best seconds of each function over interleaved repeats, after one warm-up call each."""
  results = [fn() for fn in fns]
  best = [np.inf] * len(fns)
  for _ in range(repeats):
    for j, fn in enumerate(fns):
      start = time.perf_counter()
      fn()
      best[j] = min(best[j], time.perf_counter() - start)
  return best, results


def run(args):
  rng = np.random.default_rng(args.seed)
  rows = []
  for size in args.database_sizes:
    for num_bits in args.bits:
      db_bits = rng.random((size, num_bits)) < 0.5
      index = HammingIndex(num_bits)
      index.add(packing.pack_bits(db_bits))
      query = _queries(rng, db_bits, args.num_queries, args.flip)
      packed_query = packing.pack_bits(query)
      for depth in args.depths:
        _, candidates = index.search(packed_query, depth)
        (scan_s, jit_s, numpy_s, whole_s), (_, jitted, tables, _) = _best([
            lambda: index.search(packed_query, depth),
            lambda: asymmetric.rerank(query, index.codes, candidates, num_bits=num_bits),
            lambda: asymmetric.rerank_tables(query, index.codes, candidates, num_bits=num_bits),
            lambda: index.search_asymmetric(query, min(args.k, depth), candidates=depth),
        ], args.repeats)
        identical = all(np.array_equal(a, b) for a, b in zip(jitted, tables))
        q = args.num_queries
        rows.append(dict(size=size, bits=num_bits, depth=depth, scan=q / scan_s,
                         jit=q / jit_s, numpy=q / numpy_s, whole=q / whole_s,
                         identical=identical))
        print(rows[-1], flush=True)
  return rows


def markdown(args, rows):
  lines = [
      "## The asymmetric re-ranking: jitted against NumPy lookup tables",
      "",
      "Command: `.venv/bin/python benchmarks/rerank_benchmark.py "
      + " ".join(f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                 for k, v in vars(args).items() if k not in ("markdown", "json") and v is not None)
      + "`",
      "",
      f"Machine: {mesh_lib.describe_host()}, XLA:{jax.default_backend().upper()}. "
      f"{args.num_queries} queries (database codes "
      f"with {args.flip:.0%} of their signs flipped, confidences |tanh(normal)|), random uniform "
      f"database codes; best of {args.repeats} interleaved runs after a warm-up call. Scan: the "
      "Hamming top c (`HammingIndex.search`); re-ranking alone: its c candidates ordered by the "
      "asymmetric distance; whole: `search_asymmetric` (scan, re-ranking, the first "
      f"{args.k}). Queries/s.",
      "",
      "| database | bits | depth c | scan | re-rank jitted | re-rank NumPy | jitted / NumPy "
      "| whole | identical |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
  ]
  for r in rows:
    lines.append(f"| {r['size']:,} | {r['bits']} | {r['depth']:,} | {r['scan']:,.0f} | "
                 f"{r['jit']:,.0f} | {r['numpy']:,.0f} | {r['jit'] / r['numpy']:.1f}x | "
                 f"{r['whole']:,.0f} | {'yes' if r['identical'] else 'NO'} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = _parse_args(argv)
  rows = run(args)
  text = markdown(args, rows)
  print(text)
  record = {"host": mesh_lib.describe_host(), "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "rows": rows}
  for path, content in ((args.markdown, text), (args.json, json.dumps(record, indent=2))):
    if path:
      with open(path, "w") as f:
        f.write(content)
  if not all(r["identical"] for r in rows):
    raise SystemExit("the jitted and the NumPy re-rankings differ")


if __name__ == "__main__":
  main()
