"""Exact Hamming k-NN: deephash_jax.search vs faiss IndexBinaryFlat, same process, same codes.

Example (the figures in benchmarks/SEARCH_RESULTS.md):

  .venv/bin/python benchmarks/search_benchmark.py --database_sizes=1000000 \
      --bits=32,64,128 --num_queries=256 --k=100 --threads=2 \
      --scaling_sizes=10000,100000,1000000,10000000 --markdown=benchmarks/SEARCH_RESULTS.md

Table 1 times one ``search`` of all queries against a database already added
(faiss ``IndexBinaryFlat.add``; ours ``layout.prepare_database``, which is what
``HammingIndex`` keeps), after a warm-up call (compilation excluded), best of
``--repeats`` interleaved runs, and checks the results: the distance arrays must
be identical, and the ids too (both break ties by lower index). faiss runs with
``--threads`` OpenMP threads and, separately, with 1: on a machine shared with
other jobs its OpenMP threads lose far more than single-threaded code, and the
comparison is against the better of the two.
Table 2 runs each (engine, size, bits) in a fresh subprocess and reports search
time and memory. Everything is pinned to ``--threads`` cores (CPU affinity set
before JAX and faiss start their thread pools).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _int_list(text):
  return [int(float(v)) for v in text.split(",") if v]


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--database_sizes", type=_int_list, default=[1_000_000])
  parser.add_argument("--bits", type=_int_list, default=[32, 64, 128])
  parser.add_argument("--num_queries", type=int, default=256)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--scaling_sizes", type=_int_list, default=[10_000, 100_000, 1_000_000],
                      help="database sizes of the scaling table; empty to skip it")
  parser.add_argument("--chunk_size", type=int, default=None)
  parser.add_argument("--block_rows", type=int, default=None)
  parser.add_argument("--query_batch_size", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--markdown", default=None, help="also write the tables to this file")
  parser.add_argument("--json", default=None, help="also write the rows (and the devices) to "
                      "this JSON file")
  parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _pin_threads(threads):
  """Restricts this process (and the pools JAX/faiss start later) to `threads` cores."""
  cores = sorted(os.sched_getaffinity(0))
  if threads < len(cores):
    os.sched_setaffinity(0, cores[:threads])
  os.environ["OMP_NUM_THREADS"] = str(threads)


def _random_codes(rng, n, num_bits):
  import numpy as np
  codes = rng.integers(0, 256, (n, (num_bits + 7) // 8), dtype=np.uint8)
  spare = 8 * codes.shape[1] - num_bits
  if spare:
    codes[:, -1] &= (1 << (8 - spare)) - 1
  return codes


def _engine_kwargs(args):
  return {name: getattr(args, name) for name in ("chunk_size", "block_rows")
          if getattr(args, name) is not None}


def _query_kwargs(args):
  return {} if args.query_batch_size is None else {"query_batch_size": args.query_batch_size}


def _compare(d_ours, i_ours, d_faiss, i_faiss):
  import numpy as np
  same_d = bool(np.array_equal(d_ours, d_faiss))
  # Ids must agree wherever the distance is below the k-th one (no boundary tie).
  strict = d_faiss < d_faiss[:, -1:]
  same_i_strict = bool(np.array_equal(i_ours[strict], i_faiss[strict]))
  return same_d, same_i_strict, bool(np.array_equal(i_ours, i_faiss))


def run_speed(args):
  """Table 1: queries/s, ours vs faiss, with result checks."""
  import faiss
  import jax
  import numpy as np
  from deephash_jax.search import hamming, layout

  faiss.omp_set_num_threads(args.threads)
  rows = []
  for n in args.database_sizes:
    for num_bits in args.bits:
      rng = np.random.default_rng(args.seed)
      xb = _random_codes(rng, n, num_bits)
      xq = _random_codes(rng, args.num_queries, num_bits)
      index = faiss.IndexBinaryFlat(num_bits)
      index.add(xb)
      start = time.perf_counter()
      database = layout.prepare_database(xb, num_bits=num_bits, **_engine_kwargs(args))
      jax.block_until_ready(database.chunks)
      prepare_s = time.perf_counter() - start
      ours = lambda: hamming.search_prepared(xq, database, args.k, **_query_kwargs(args))
      def theirs(threads):
        faiss.omp_set_num_threads(threads)
        return index.search(xq, args.k)
      start = time.perf_counter()
      d_ours, i_ours = ours()  # compiles
      first_call_s = time.perf_counter() - start
      d_faiss, i_faiss = theirs(args.threads)
      times = {"ours": [], "faiss": [], "faiss_1": []}
      for _ in range(args.repeats):  # interleaved: all see the same machine load
        for name, fn in (("ours", ours), ("faiss", lambda: theirs(args.threads)),
                         ("faiss_1", lambda: theirs(1))):
          start = time.perf_counter()
          fn()
          times[name].append(time.perf_counter() - start)
      same_d, same_i_strict, same_i = _compare(d_ours, i_ours, d_faiss, i_faiss)
      rows.append(dict(n=n, bits=num_bits, ours_s=min(times["ours"]),
                       faiss_s=min(times["faiss"]), faiss_1_s=min(times["faiss_1"]),
                       ours_median_s=float(np.median(times["ours"])),
                       faiss_median_s=float(np.median(times["faiss"])),
                       prepare_s=prepare_s, first_call_s=first_call_s, same_d=same_d,
                       same_i_strict=same_i_strict, same_i=same_i,
                       load=os.getloadavg()[0]))
      r = rows[-1]
      best_faiss = min(r["faiss_s"], r["faiss_1_s"])
      print(f"N={n} bits={num_bits}: ours {args.num_queries / r['ours_s']:.0f} q/s, "
            f"faiss {args.num_queries / r['faiss_s']:.0f} q/s "
            f"({args.num_queries / r['faiss_1_s']:.0f} on 1 thread), "
            f"ours / best faiss {best_faiss / r['ours_s']:.2f}x, D equal {same_d}, "
            f"I equal {same_i} (strict {same_i_strict}), load {r['load']:.1f}", flush=True)
  return rows


def _peak_rss_bytes():
  """This process's peak resident memory (VmHWM; unlike ru_maxrss, it is not
  inherited from the parent process across fork + exec)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("VmHWM not found in /proc/self/status")


def run_worker(args):
  """One (engine, size, bits) measurement in this fresh process; prints JSON."""
  import numpy as np
  import psutil
  engine, n, num_bits = args._worker.split(":")
  n, num_bits = int(n), int(num_bits)
  rng = np.random.default_rng(args.seed)
  xb = _random_codes(rng, n, num_bits)
  xq = _random_codes(rng, args.num_queries, num_bits)
  extra = {}
  if engine == "faiss":
    import faiss
    faiss.omp_set_num_threads(args.threads)
    baseline = psutil.Process().memory_info().rss
    index = faiss.IndexBinaryFlat(num_bits)
    index.add(xb)
    def run():
      index.search(xq, args.k)
    # faiss's OpenMP threads suffer badly when the cores are shared: the best of
    # --threads and 1 thread is reported.
    runs = {args.threads: run}
    if args.threads > 1:
      def run_one_thread():
        faiss.omp_set_num_threads(1)
        index.search(xq, args.k)
        faiss.omp_set_num_threads(args.threads)
      runs[1] = run_one_thread
  else:
    import jax
    from deephash_jax.search import hamming, layout
    jax.numpy.zeros(1).block_until_ready()  # runtime start-up is not search memory
    baseline = psutil.Process().memory_info().rss
    database = layout.prepare_database(xb, num_bits=num_bits, **_engine_kwargs(args))
    runs = {0: lambda: hamming.search_prepared(xq, database, args.k, **_query_kwargs(args))}
    batch = min(args.query_batch_size or hamming.DEFAULT_QUERY_BATCH_SIZE, args.num_queries)
    compiled = hamming._search_jit.lower(
        jax.ShapeDtypeStruct((batch, database.chunks.shape[1]), jax.numpy.uint32),
        database.chunks, 0, database.num_codes, k=args.k, max_distance=num_bits).compile()
    extra = dict(index_mb=database.chunks.nbytes / 2**20,
                 xla_temp_mb=compiled.memory_analysis().temp_size_in_bytes / 2**20)
  times = {name: [] for name in runs}
  for run in runs.values():
    run()  # warm-up (compiles ours)
  for _ in range(args.repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  threads, best = min(((name, min(t)) for name, t in times.items()), key=lambda x: x[1])
  peak = _peak_rss_bytes()
  print(json.dumps(dict(engine=engine, n=n, bits=num_bits, search_s=best, threads=threads,
                        load=os.getloadavg()[0],
                        peak_extra_mb=(peak - baseline) / 2**20, peak_mb=peak / 2**20,
                        **extra)))


def run_scaling(args):
  """Table 2: each measurement in a fresh subprocess for a clean peak-memory figure."""
  rows = []
  passthrough = [f"--num_queries={args.num_queries}", f"--k={args.k}",
                 f"--threads={args.threads}", f"--repeats={max(1, args.repeats // 2)}",
                 f"--seed={args.seed}"]
  passthrough += [f"--{name}={getattr(args, name)}"
                  for name in ("chunk_size", "block_rows", "query_batch_size")
                  if getattr(args, name) is not None]
  for n in args.scaling_sizes:
    for num_bits in args.bits:
      pair = {}
      for engine in ("ours", "faiss"):
        out = subprocess.run([sys.executable, __file__, f"--_worker={engine}:{n}:{num_bits}"]
                             + passthrough, check=True, capture_output=True, text=True)
        pair[engine] = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append(pair)
      print(f"N={n} bits={num_bits}: ours {pair['ours']['search_s'] * 1e3:.1f} ms "
            f"(index {pair['ours']['index_mb']:.1f} MB, XLA temp "
            f"{pair['ours']['xla_temp_mb']:.1f} MB, +{pair['ours']['peak_extra_mb']:.0f} MB "
            f"RSS), faiss {pair['faiss']['search_s'] * 1e3:.1f} ms on "
            f"{pair['faiss']['threads']} thread(s) (+{pair['faiss']['peak_extra_mb']:.0f} MB RSS)",
            flush=True)
  return rows


def markdown(args, speed_rows, scaling_rows, command):
  lines = [
      "## Exact Hamming k-NN search vs faiss IndexBinaryFlat", "",
      f"Command: `{command}`", "",
      f"Machine: {os.cpu_count()} visible CPU cores, both engines pinned to {args.threads}; "
      f"{args.num_queries} random queries, k={args.k}, random uniform database codes.", "",
      f"| database | bits | ours q/s | faiss q/s ({args.threads} thr) | faiss q/s (1 thr) | "
      "ours / best faiss | D identical | I identical | load avg |",
      "|---:|---:|---:|---:|---:|---:|:---:|:---:|---:|",
  ]
  for r in speed_rows:
    best_faiss = min(r["faiss_s"], r["faiss_1_s"])
    lines.append(
        f"| {r['n']:,} | {r['bits']} | {args.num_queries / r['ours_s']:,.0f} | "
        f"{args.num_queries / r['faiss_s']:,.0f} | {args.num_queries / r['faiss_1_s']:,.0f} | "
        f"{best_faiss / r['ours_s']:.2f}x | {'yes' if r['same_d'] else 'NO'} | "
        f"{'yes' if r['same_i'] else ('ties only' if r['same_i_strict'] else 'NO')} | "
        f"{r['load']:.1f} |")
  lines += ["", "Best of the interleaved repeats; one-off costs (not in q/s): "
            + ", ".join(f"{r['bits']} bits: layout {r['prepare_s'] * 1e3:.0f} ms, "
                        f"first call with compile {r['first_call_s']:.1f} s"
                        for r in speed_rows) + "."]
  if scaling_rows:
    lines += ["", f"Scaling: one search of {args.num_queries} queries, k={args.k}, each engine "
              f"in a fresh process (faiss: best of {args.threads} threads and 1). Memory: our laid-out index, the XLA temporary buffers of one "
              "search call (exact, from the compiled program), and the peak resident memory "
              "each process added after imports and data generation (ours includes XLA "
              "compilation).", "",
              "| database | bits | ours ms | faiss ms | ours / faiss | ours index MB | "
              "ours XLA temp MB | ours +RSS MB | faiss +RSS MB | load avg |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pair in scaling_rows:
      o, f = pair["ours"], pair["faiss"]
      lines.append(f"| {o['n']:,} | {o['bits']} | {o['search_s'] * 1e3:.1f} | "
                   f"{f['search_s'] * 1e3:.1f} | {f['search_s'] / o['search_s']:.2f}x | "
                   f"{o['index_mb']:.1f} | {o['xla_temp_mb']:.1f} | "
                   f"{o['peak_extra_mb']:.0f} | {f['peak_extra_mb']:.0f} | "
                   f"{o['load']:.1f}, {f['load']:.1f} |")
  lines += ["", "Notes:", "",
            "- The machine was shared with other jobs while this ran (the load average "
            f"columns: runnable tasks on these {os.cpu_count()} cores), so absolute times are "
            "noisy; every comparison is between runs interleaved under the same load.",
            "- Ours is `hamming.search_prepared` on the layout `HammingIndex` keeps "
            "(block-minimum pruning, see the `hamming` module docstring); results are exact and "
            "equal to faiss's, ties included.",
            "- Not in the times: laying the database out (once per `add`) and compiling "
            "(once per query-batch shape, database layout and k). `+RSS` for ours includes a "
            "transient second copy of the index while it is laid out and the XLA compiler; "
            "the JAX runtime itself (about 200 MB) is in the baseline.",
            "- faiss's `IndexBinaryFlat` scans with a heap per query; ours pays a roughly "
            "fixed cost per query for its three selections of k+1 out of a few thousand "
            "values, which is why faiss wins on small databases."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = _parse_args(argv)
  _pin_threads(args.threads)
  if args._worker:
    run_worker(args)
    return
  speed_rows = run_speed(args)
  scaling_rows = run_scaling(args) if args.scaling_sizes else []
  command = " ".join([os.path.relpath(sys.executable)] + sys.argv)
  text = markdown(args, speed_rows, scaling_rows, command)
  print(text)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text)
  if args.json:
    import jax  # pylint: disable=g-import-not-at-top  (after the thread pinning)
    with open(args.json, "w") as f:
      json.dump({"command": command, "platform": jax.default_backend(),
                 "device_kind": jax.devices()[0].device_kind, "num_queries": args.num_queries,
                 "k": args.k, "faiss_threads": args.threads, "speed": speed_rows,
                 "scaling": scaling_rows}, f, indent=2)


if __name__ == "__main__":
  main()
