r"""Load test of the demo's `POST /api/search` on loopback: latency percentiles and throughput.

Against a running demo:

  .venv/bin/python benchmarks/demo_load.py --url=http://127.0.0.1:8000 --image=query.png \
      --requests=500 --concurrency=16

Or let it start (and stop) a demo server on a free loopback port itself:

  .venv/bin/python benchmarks/demo_load.py --workdir=workdirs/catalogue \
      --index=catalogue.dhidx --image=query.png --requests=500 --concurrency=16

Each of `--concurrency` threads keeps one HTTP/1.1 keep-alive connection and sends the same
multipart upload until `--requests` have been sent in all, after an uncounted warm-up of
10 x `--concurrency` requests. A request counts as an error unless it returns 200 with a JSON
body holding `k` results. Prints one JSON object: p50/p90/p99/max latency in ms, requests per
second over the whole run, the error count and the first errors, and how many distinct answers
the identical requests got (1 unless concurrency corrupts a search).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def multipart_body(image: bytes, filename: str) -> tuple[bytes, str]:
  boundary = uuid.uuid4().hex
  body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
          f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
  body += image + f"\r\n--{boundary}--\r\n".encode()
  return body, f"multipart/form-data; boundary={boundary}"


def run_load(url: str, image: bytes, *, num_requests: int = 500, concurrency: int = 16,
             k: int = 10, filename: str = "query.png", timeout: float = 60.0) -> dict:
  """Sends `num_requests` searches from `concurrency` threads; latency and throughput figures."""
  parsed = urllib.parse.urlsplit(url)
  body, content_type = multipart_body(image, filename)
  headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
  path = f"/api/search?k={k}"
  latencies, errors, answers, lock = [], [], set(), threading.Lock()
  remaining = [num_requests]

  def take() -> bool:
    with lock:
      if remaining[0] <= 0:
        return False
      remaining[0] -= 1
      return True

  def worker():
    connection = None
    while take():
      start = time.perf_counter()
      try:
        if connection is None:
          connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
          raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        results = json.loads(payload)["results"]
        if len(results) != k:
          raise RuntimeError(f"expected {k} results: {payload[:200]!r}")
        with lock:
          latencies.append(elapsed)
          answers.add(tuple((r["id"], r["distance"]) for r in results))
      except Exception as e:  # pylint: disable=broad-except
        with lock:
          errors.append(f"{type(e).__name__}: {e}")
        if connection is not None:
          connection.close()
        connection = None
    if connection is not None:
      connection.close()

  threads = [threading.Thread(target=worker) for _ in range(concurrency)]
  start = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  wall = time.perf_counter() - start
  ordered = sorted(latencies)

  def percentile(q):
    if not ordered:
      return None
    return round(1e3 * ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))],
                 2)
  return {
      "url": url, "requests": num_requests, "concurrency": concurrency, "k": k,
      "ok": len(latencies), "errors": len(errors), "first_errors": errors[:5],
      "p50_ms": percentile(50), "p90_ms": percentile(90), "p99_ms": percentile(99),
      "max_ms": percentile(100),
      "mean_ms": round(1e3 * sum(ordered) / len(ordered), 2) if ordered else None,
      "requests_per_s": round(len(latencies) / wall, 1), "seconds": round(wall, 2),
      # The same query under load must always get the same answer.
      "distinct_answers": len(answers),
  }


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(workdir: str, index: str, *, port: int | None = None,
                 timeout: float = 300.0, env: dict | None = None):
  """Starts `deephash demo` on 127.0.0.1 in a subprocess; returns (process, base URL)."""
  port = port or free_port()
  # Output goes to a file, not a pipe: a pipe nobody reads would block a chatty server.
  log = tempfile.NamedTemporaryFile("w+", prefix="deephash_demo_", suffix=".log", delete=False)
  process = subprocess.Popen(
      [sys.executable, "-m", "deephash_jax.main", "demo", f"--workdir={workdir}",
       f"--index={index}", f"--port={port}"],
      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  process.log_path = log.name
  log.close()
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f"the demo server exited with {process.returncode}:\n"
                         f"{stop_server(process)}")
    try:
      with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
        if response.status == 200:
          return process, url
    except OSError:
      time.sleep(0.5)
  stop_server(process)
  raise TimeoutError(f"the demo server did not answer {url}/healthz within {timeout:.0f} s")


def stop_server(process) -> str:
  """Stops a server from `start_server` (SIGTERM, then SIGKILL); returns its output."""
  if process.poll() is None:
    process.terminate()
    try:
      process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
  try:
    with open(process.log_path) as f:
      output = f.read()
    os.remove(process.log_path)
  except OSError:
    output = ""
  return output


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--url", help="a running demo, e.g. http://127.0.0.1:8000")
  parser.add_argument("--workdir", help="start a demo server for this workdir...")
  parser.add_argument("--index", help="...and this index")
  parser.add_argument("--image", required=True, help="the query photo sent by every request")
  parser.add_argument("--requests", type=int, default=500)
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument("--k", type=int, default=10)
  args = parser.parse_args(argv)
  if bool(args.url) == bool(args.workdir and args.index):
    parser.error("give either --url, or --workdir and --index")
  with open(args.image, "rb") as f:
    image = f.read()
  process = None
  url = args.url
  if not url:
    process, url = start_server(args.workdir, args.index)
  try:
    # Warm-up, not counted: the server's worker threads start on demand, and the first
    # requests on each pay for it (hundreds of ms at the tail).
    run_load(url, image, num_requests=10 * args.concurrency, concurrency=args.concurrency,
             k=args.k)
    result = run_load(url, image, num_requests=args.requests, concurrency=args.concurrency,
                      k=args.k, filename=os.path.basename(args.image))
  finally:
    if process is not None:
      stop_server(process)
  print(json.dumps(result, indent=2))
  return 1 if result["errors"] else 0


if __name__ == "__main__":
  sys.exit(main())
