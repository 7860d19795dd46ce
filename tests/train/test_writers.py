"""train/writers.py: training's metrics with CLU, and without TensorFlow (the log and
metrics.jsonl); a run without TensorFlow trains and evaluates exactly as one with it."""

import json
import os
import subprocess
import sys

import pytest

from deephash_jax.train import writers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_jsonl_writer_appends_each_write_at_once(tmp_path):
  writer = writers.JsonlWriter(str(tmp_path))
  writer.write_hparams({"lr": 0.1, "layers": ((32, 1),), "name": "x", "none": None})
  writer.write_scalars(10, {"train/loss": 1.5, "train/accuracy": 0.25})
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"hparams": {"lr": 0.1, "layers": "((32, 1),)", "name": "x", "none": None}},
                   {"step": 10, "train/loss": 1.5, "train/accuracy": 0.25}]
  with writers.ensure_flushes(writer):       # nothing held back: the file already has both
    writer.write_scalars(20, {"eval/map_all": 0.5})
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
  other = tmp_path / "other"
  other.mkdir()
  writers.JsonlWriter(str(other), just_logging=True).write_scalars(1, {"a": 1.0})
  assert not (other / "metrics.jsonl").exists()     # processes other than 0 only log


def test_progress_without_clu_writes_the_rate_every_few_steps(monkeypatch):
  clock = iter([100.0, 102.0, 104.0, 105.0])
  monkeypatch.setattr(writers.time, "time", lambda: next(clock))
  written = []

  class Recorder:
    def write_scalars(self, step, scalars):
      written.append((step, scalars))
  progress = writers._Progress(num_train_steps=25, writer=Recorder(),   # pylint: disable=protected-access
                               every_steps=10)
  for step in (1, 10, 20, 25):    # the first call starts the clock; 25 is the last step
    progress(step)
  assert written == [(10, {"steps_per_sec": 9 / 2.0}), (20, {"steps_per_sec": 10 / 2.0}),
                     (25, {"steps_per_sec": 5 / 1.0})]


_WITHOUT_TF = ("import runpy, sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None); "
               "sys.argv = ['deephash'] + sys.argv[1:]; "
               "runpy.run_module('deephash_jax.main', run_name='__main__')")


@pytest.mark.slow
def test_the_main_job_without_tensorflow_gives_the_same_results(fake_source, tmp_path):
  args = ["train", "--config=configs/tiny.py", f"--config.input.source_dir={fake_source}",
          "--config.train.num_steps=6", "--config.train.log_every_steps=3", "--json"]
  outputs = {}
  for name, program in (("with", ["-m", "deephash_jax.main"]), ("without", ["-c", _WITHOUT_TF])):
    workdir = tmp_path / name
    done = subprocess.run(
        [sys.executable, *program, *args, f"--workdir={workdir}",
         f"--config.input.data_dir={tmp_path / 'tfds'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    outputs[f"{name}_files"] = set(os.listdir(workdir))
    outputs[f"{name}_log"] = done.stderr
  assert "TensorFlow is not installed: reading Fashion-MNIST" in outputs["without_log"]
  assert "metrics go to the log and" in outputs["without_log"]
  assert "metrics.jsonl" in outputs["without_files"]
  assert not any(f.startswith("events.out") for f in outputs["without_files"])
  assert any(f.startswith("events.out") for f in outputs["with_files"])
  timings = {"train_seconds", "eval_seconds"}
  with_tf = {k: v for k, v in outputs["with"].items() if k not in timings}
  assert {k: v for k, v in outputs["without"].items() if k not in timings} == with_tf
  lines = [json.loads(line) for line in
           (tmp_path / "without" / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if "train/loss" in line] == [3, 6]
  assert any("eval/map_all" in line for line in lines)
