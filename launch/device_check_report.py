"""Merges the parts launch/device_check.sh wrote into OUT_DIR/device_check.json.

    python launch/device_check_report.py OUT_DIR

Each part is the last JSON line its command printed (search.json, rerank.json: the files the
search and re-ranking benchmarks wrote). Prints which parts were merged.
"""
import glob
import json
import os
import sys


def load(path: str):
  with open(path) as f:
    text = f.read()
  lines = [line for line in text.splitlines() if line.startswith("{") and line.endswith("}")]
  return json.loads(lines[-1]) if lines else json.loads(text)


def main(out: str) -> dict:
  parts = {
      "devices": load(os.path.join(out, "devices.json")),
      "throughput": {os.path.basename(p)[len("throughput_"):-len(".json")]: load(p)
                     for p in sorted(glob.glob(os.path.join(out, "throughput_*.json")))},
      "train": (load(os.path.join(out, "train.json"))
                if os.path.exists(os.path.join(out, "train.json")) else None),   # TRAIN_CONFIG=""
      "search": load(os.path.join(out, "search.json")),
      "rerank": load(os.path.join(out, "rerank.json")),
  }
  with open(os.path.join(out, "device_check.json"), "w") as f:
    json.dump(parts, f, indent=2, sort_keys=True)
  print(json.dumps({k: sorted(v) if isinstance(v, dict) else v for k, v in parts.items()}))
  return parts


if __name__ == "__main__":
  main(sys.argv[1])
