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

With ``--view_weights=5,1,1,1`` a second table times an index of catalogue views
(``HammingIndex(view_weights=...)``: len(weights) random codes an item) against one code of
``--bits`` and one of len(weights) x ``--bits`` an item: the Hamming top ``--k`` and the whole
``search_asymmetric`` from ``--view_depth`` candidates, and checks the views' distances against
NumPy's weighted sums on the first 32 queries.
"""
from __future__ import annotations

import argparse
import json
import time

import jax

import numpy as np

from deephash_jax import mesh as mesh_lib
from deephash_jax.evaluators import ranking
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
  parser.add_argument("--view_weights", type=_int_list, default=None,
                      help="also time an index of views with these weights (e.g. 5,1,1,1)")
  parser.add_argument("--view_depth", type=int, default=100,
                      help="candidates re-ranked in the views' table")
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


def run_views(args):
  """The views' table: one code, views, and one long code an item (the views' bits side by
  side), searched alike; queries near the items' first view (the long code's: near all)."""
  rng = np.random.default_rng(args.seed + 1)
  weights, rows = tuple(args.view_weights), []
  for size in args.database_sizes:
    for num_bits in args.bits:
      views = rng.random((size, len(weights), num_bits)) < 0.5
      packed_views = packing.pack_bits(views.reshape(-1, num_bits)).reshape(size, len(weights), -1)
      query = _queries(rng, views[:, 0], args.num_queries, args.flip)
      long_bits = len(weights) * num_bits
      long_query = _queries(rng, views.reshape(size, -1), args.num_queries, args.flip)
      cases = [("one code", HammingIndex(num_bits), packed_views[:, 0], query),
               (f"views {','.join(map(str, weights))}",
                HammingIndex(num_bits, view_weights=weights), packed_views, query),
               (f"one code of {long_bits} bits", HammingIndex(long_bits),
                packing.pack_bits(views.reshape(size, -1)), long_query)]
      for name, index, codes, q in cases:
        index.add(codes)
        packed = packing.pack_bits(q)
        (scan_s, whole_s), (scanned, _) = _best([
            lambda index=index, packed=packed: index.search(packed, args.k),
            lambda index=index, q=q: index.search_asymmetric(q, args.k,
                                                             candidates=args.view_depth),
        ], args.repeats)
        exact = True
        if index.views > 1:          # NumPy's weighted sums, query by query
          for i in range(min(32, len(packed))):
            sums = sum(w * ranking.hamming_distances(packed[i:i + 1], packed_views[:, v])[0]
                       for v, w in enumerate(weights))
            exact &= np.array_equal(scanned[0][i], np.sort(sums)[:args.k])
        rows.append(dict(size=size, bits=num_bits, index=name,
                         scanned_bytes=index.scanned_bytes,
                         scan=args.num_queries / scan_s, whole=args.num_queries / whole_s,
                         exact=bool(exact)))
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


def markdown_views(args, rows):
  lines = [
      "",
      "## An index of catalogue views against one code",
      "",
      f"The same queries' Hamming top {args.k} (`HammingIndex.search`) and whole "
      f"`search_asymmetric` (top {args.view_depth} re-ranked), queries/s; views: "
      f"{len(args.view_weights)} random codes an item ranked by the weighted sum of their "
      f"distances (weights {','.join(map(str, args.view_weights))}), exact: its distances equal "
      "NumPy's weighted sums (first 32 queries).",
      "",
      "| database | bits | index | bytes scanned an item | top k | whole | exact |",
      "|---:|---:|---|---:|---:|---:|:---:|",
  ]
  for r in rows:
    lines.append(f"| {r['size']:,} | {r['bits']} | {r['index']} | {r['scanned_bytes']} | "
                 f"{r['scan']:,.0f} | {r['whole']:,.0f} | {'yes' if r['exact'] else 'NO'} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = _parse_args(argv)
  rows = run(args)
  view_rows = run_views(args) if args.view_weights else []
  text = markdown(args, rows) + (markdown_views(args, view_rows) if view_rows else "")
  print(text)
  record = {"host": mesh_lib.describe_host(), "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "rows": rows, "view_rows": view_rows}
  for path, content in ((args.markdown, text), (args.json, json.dumps(record, indent=2))):
    if path:
      with open(path, "w") as f:
        f.write(content)
  if not all(r["identical"] for r in rows):
    raise SystemExit("the jitted and the NumPy re-rankings differ")
  if not all(r["exact"] for r in view_rows):
    raise SystemExit("the index of views differs from NumPy's weighted sums")


if __name__ == "__main__":
  main()
