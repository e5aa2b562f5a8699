"""End to end: the launchers chained on the tiny corpus, with the artifacts and invariants checked."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(module, *args, env):
  cmd = [sys.executable, "-m", module, *args]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


STAGES = {"corpus", "keys", "backbone", "surrogate", "craft", "suspect", "benign", "verify"}


def test_demo_prints_summary_and_writes_artifacts(demo_run):
  workdir, out, _ = demo_run
  assert "=== jaxtag demo: audio data taggants ===" in out
  assert "suspect   protected" in out and "benign    clean" in out
  summary = json.loads((workdir / "demo_summary.json").read_text())
  assert set(summary["wall_time_s"]) == STAGES
  splits = summary["data"]["splits"]
  assert all(splits[s]["num_clips"] > 0 for s in ("train", "validation", "test"))
  assert (workdir / "config.json").exists()
  for name in ("surrogate", "suspect", "benign"):
    assert (workdir / name / "final").is_dir() and (workdir / name / "model.json").exists()
  assert [s["workdir"] for s in summary["surrogates"]] == [str(workdir / "surrogate")]
  # The finetune scenario: every model starts from the backbone, trained on another corpus draw.
  assert summary["scenario"] == "finetune"
  backbone = json.loads((workdir / "backbone" / "config.json").read_text())
  assert backbone["data"]["corpus_seed"] != json.loads(
      (workdir / "surrogate" / "config.json").read_text())["data"]["corpus_seed"]
  for name in ("surrogate", "suspect", "benign"):
    stage = json.loads((workdir / name / "config.json").read_text())
    assert stage["init_from"] == str(workdir / "backbone"), name
  for name in ("suspect", "benign"):
    report = json.loads((workdir / f"verify_{name}" / "verify_report.json").read_text())
    assert report["num_keys"] == summary["keys"]["num_keys"]
    assert 0.0 < report["p_value"] <= 1.0
    assert (workdir / f"verify_{name}" / "verify_report.png").stat().st_size > 0
  # The suspect trained on the protected copy, the benign model (its paired control: same seed)
  # on the clean corpus.
  suspect_cfg = json.loads((workdir / "suspect" / "config.json").read_text())
  benign_cfg = json.loads((workdir / "benign" / "config.json").read_text())
  assert suspect_cfg["data"]["root"] == str(workdir / "protected")
  assert benign_cfg["data"]["root"] != suspect_cfg["data"]["root"]
  assert benign_cfg["seed"] == suspect_cfg["seed"]
  effect = summary["taggant_effect"]
  assert len(effect["delta_log_prob"]) == summary["keys"]["num_keys"]
  assert np.isclose(effect["mean"], np.mean(effect["delta_log_prob"]))
  assert "key-label shift (white-box" in out
  # Item 10 of issue 18: the shift is a diagnostic of one pair of models, not a bound.
  assert "upper bound" not in out and "not a bound" in out
  measured = summary["craft"]["quality"]
  clip = measured["clip_snr_db"]
  assert (f"SNR per poison: min {clip['min']:.1f} dB, median {clip['median']:.1f} dB; "
          f"dataset-level SNR {measured['dataset_snr_db']:.1f} dB (energy of all "
          f"{summary['craft']['num_train']} training clips") in out
  assert f"perceptual quality of {measured['perceptual_clips']} poison" in out
  for name, field in (("PESQ-WB", "pesq_wb"), ("STOI", "stoi")):
    if measured[field] is None:   # the quality extra is absent: the reason is printed
      assert f"{name} not measured" in out and "pip install" in measured[field + "_reason"]
    else:
      assert f"median {measured[field]['median']:.{2 if name == 'PESQ-WB' else 4}f}" in out
  # The cost, clip by clip, reproduces the two training runs' own test accuracies.
  cost = summary["accuracy_cost"]
  assert cost["treated_accuracy"] == pytest.approx(summary["suspect"]["test/accuracy"], abs=1e-6)
  assert cost["control_accuracy"] == pytest.approx(summary["benign"]["test/accuracy"], abs=1e-6)
  assert cost["num_clips"] == splits["test"]["num_clips"]
  assert cost["low"] <= cost["cost"] <= cost["high"]
  assert (f"test-accuracy cost of the protection: {100 * cost['cost']:+.1f} points (benign "
          f"{100 * cost['control_accuracy']:.1f}% - suspect") in out
  assert f"[{100 * cost['low']:+.1f}, {100 * cost['high']:+.1f}], McNemar exact p" in out


def _read_train(root):
  from jaxtag.data import speechcommands
  return speechcommands.load_speech_commands(root, split="train", progress=False)


def test_protected_dataset_holds_exactly_the_crafted_taggants(demo_run):
  """Key file separate and intact, SNR floor held by every poison as read back from the WAVs,
  the WAVs carry the recorded perturbation to 16-bit precision, nothing else changed."""
  from jaxtag.taggants import keyfile
  workdir, _, _ = demo_run
  summary = json.loads((workdir / "demo_summary.json").read_text())
  protected_root = pathlib.Path(summary["craft"]["protected_dataset"])
  key_file = pathlib.Path(summary["keys"]["key_file"]).resolve()
  assert protected_root.resolve() not in key_file.parents
  assert not list(protected_root.rglob("*.npz"))
  _, manifest = keyfile.load_keys(key_file)         # intact: every SHA-256 checks out
  assert manifest["fingerprint"] == summary["craft"]["key_fingerprint"]

  clean, protected = _read_train(summary["data"]["root"]), _read_train(protected_root)
  assert clean.paths == protected.paths
  np.testing.assert_array_equal(clean.labels, protected.labels)   # clean-label
  record = np.load(workdir / "craft" / "perturbations.npz")
  poisons = record["indices"]
  assert [clean.paths[i] for i in poisons] == record["files"].tolist()
  changed = np.flatnonzero(np.any(protected.waveforms != clean.waveforms, axis=1))
  assert set(changed.tolist()) <= set(poisons.tolist())
  delta = protected.waveforms[poisons].astype(np.float64) - clean.waveforms[poisons]
  np.testing.assert_array_equal(delta * 32768, record["delta"].astype(np.float64) * 32768)
  craft_cfg = json.loads((workdir / "craft" / "config.json").read_text())
  floor = craft_cfg["craft"]["snr_db"]
  power = np.sum(np.square(clean.waveforms[poisons], dtype=np.float64), axis=1)
  noise = np.sum(np.square(delta), axis=1)
  snr = 10 * np.log10(power / np.maximum(noise, 1e-300))
  assert np.all(snr >= floor), (snr, floor)
  assert summary["craft"]["snr_db_min"] == pytest.approx(snr.min(), abs=1e-3)
  # The quality block, against the WAVs read back: per poison, and over the whole training set.
  measured = summary["craft"]["quality"]
  assert measured["clip_snr_db"]["min"] == pytest.approx(snr.min(), abs=0.01)
  assert measured["clip_snr_db"]["median"] == pytest.approx(np.median(snr), abs=0.01)
  dataset_snr = 10 * np.log10(np.sum(np.square(clean.waveforms, dtype=np.float64))
                              / np.sum(noise))
  assert measured["dataset_snr_db"] == pytest.approx(dataset_snr, abs=0.01)
  assert measured["num_clips"] == len(clean) and measured["num_perturbed"] == poisons.size
  try:
    import pesq
    import pystoi
  except ImportError:
    assert "pip install 'jaxtag[quality]'" in measured["pesq_wb_reason"]
    return
  wideband = [pesq.pesq(16000, clean.waveforms[i].astype(np.float64),
                        protected.waveforms[i].astype(np.float64), "wb") for i in poisons]
  intelligibility = [pystoi.stoi(clean.waveforms[i], protected.waveforms[i], 16000)
                     for i in poisons]
  assert clean.sample_rate == 16000 and measured["perceptual_clips"] == poisons.size
  assert measured["pesq_wb"]["median"] == pytest.approx(np.median(wideband), abs=1e-3)
  assert measured["pesq_wb"]["min"] == pytest.approx(np.min(wideband), abs=1e-3)
  assert measured["stoi"]["median"] == pytest.approx(np.median(intelligibility), abs=1e-4)


@pytest.mark.parametrize("by_file", [True, False])
def test_craft_export_check_catches_a_one_step_change(demo_run, monkeypatch, by_file):
  """The read-back check craft runs before publishing, chunked so that its memory does not grow
  with the dataset (file by file where clips have paths, else from the loaded split), finds a
  single 16-bit step of difference anywhere, and refuses a written split with other files than
  the input."""
  import dataclasses

  from jaxtag.data import readback, sources
  workdir, _, _ = demo_run
  summary = json.loads((workdir / "demo_summary.json").read_text())
  protected_root = pathlib.Path(summary["craft"]["protected_dataset"])
  clean, protected = _read_train(summary["data"]["root"]), _read_train(protected_root)
  if not by_file:
    clean, protected = (dataclasses.replace(d, paths=None) for d in (clean, protected))
  source = sources.DataSource(kind="speech_commands", root=str(protected_root))
  monkeypatch.setattr(readback, "CHECK_CHUNK", 3)
  record = np.load(workdir / "craft" / "perturbations.npz")
  num_changed = int(np.any(record["delta"] != 0, axis=1).sum())

  def check(written, reference=clean):
    return readback.check_export(source, protected_root, {"train": written},
                                 clean={"train": reference})

  assert {k: v for k, v in check(protected).items() if k != "splits"} == {
      "max_abs_error": 0.0, "error_in_lsb": 0.0, "clips_changed": num_changed,
      "extra_files_checked": 0}
  # The last clip that is not a poison: with 3-clip chunks, in one of the later chunks.
  clip = max(set(range(len(clean))) - set(record["indices"].tolist()))
  tampered = protected.waveforms.copy()
  tampered[clip, 100] += 1.0 / 32768
  result = check(protected.with_waveforms(tampered))
  assert result["error_in_lsb"] == pytest.approx(1.0)
  # The written files themselves were not touched, so no extra clip counts as changed.
  assert result["clips_changed"] == num_changed
  if by_file:
    renamed = dataclasses.replace(clean, paths=clean.paths[:-1] + ("yes/other_nohash_9.wav",))
    with pytest.raises(readback.ReadBackError, match="other files than the input"):
      check(renamed, renamed)


def test_craft_publishes_a_complete_copy_and_never_over_the_input(demo_run, tmp_path):
  """The demo's protected copy holds every file of the corpus (non-audio and background noise
  byte for byte) and every split, recorded in the summary; a craft whose output_dir is the input
  or holds a user's file is refused before anything is written; a craft reused from its summary
  still removes the temporary folder a killed export left."""
  from jaxtag import config as config_lib
  from jaxtag.data import publish, speechcommands
  from jaxtag.taggants import jobs
  workdir, _, env = demo_run
  summary = json.loads((workdir / "demo_summary.json").read_text())
  data_root = pathlib.Path(summary["data"]["root"])
  protected_root = pathlib.Path(summary["craft"]["protected_dataset"])
  extra = summary["craft"]["extra_files"]
  skipped = {".jaxtag_corpus", "manifest.json"}   # They describe the clean corpus cache.
  assert set(extra["skipped"]["files"]) == skipped
  inputs, outputs = publish.listing(data_root), publish.listing(protected_root)
  assert set(outputs) == set(inputs) - skipped | {publish.MARKER}
  assert any(p.startswith("_background_noise_/") for p in extra["copied"]["files"])
  for rel in extra["copied"]["files"]:
    assert (protected_root / rel).read_bytes() == (data_root / rel).read_bytes(), rel
  for split in ("train", "validation", "test"):
    clips = speechcommands.list_speech_commands(protected_root, split)[0]
    assert clips == speechcommands.list_speech_commands(data_root, split)[0]
    assert summary["craft"]["export_check"]["splits"][split]["clips"] == len(clips)

  job = config_lib.from_config(jobs.CraftJob,
                               json.loads((workdir / "craft" / "config.json").read_text()))
  stale = protected_root.with_name(f".{protected_root.name}.tmp-{os.getpid()}")
  stale.mkdir()
  (stale / publish.MARKER).write_text("{}")
  assert jobs.run_craft_job(job, workdir / "craft")["reused"]
  assert not stale.exists()

  before = {p: p.read_bytes() for p in sorted(data_root.rglob("*")) if p.is_file()}
  cmd = [sys.executable, "-m", "launch.craft", "--config=launch/configs/craft.py:tiny",
         f"--workdir={tmp_path / 'craft'}", f"--config.surrogate={workdir / 'surrogate'}",
         f"--config.key_file={workdir / 'keys' / 'keys.npz'}", f"--config.output_dir={data_root}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1 and "is the input dataset" in proc.stderr, proc.stderr[-2000:]
  assert "Choose another --config.output_dir" in proc.stderr
  assert {p: p.read_bytes() for p in sorted(data_root.rglob("*")) if p.is_file()} == before
  assert not (tmp_path / "craft").exists()
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  with pytest.raises(publish.PublishError, match="not empty.*Choose an empty or new output_dir"):
    jobs.run_craft_job(dataclasses.replace(job, output_dir=str(mine)), tmp_path / "other")
  assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_key_file_is_secret_intact_and_outside_dataset(demo_run):
  from jaxtag.taggants import keyfile
  workdir, _, _ = demo_run
  summary = json.loads((workdir / "demo_summary.json").read_text())
  key_file = pathlib.Path(summary["keys"]["key_file"])
  data_root = pathlib.Path(summary["data"]["root"]).resolve()
  assert data_root not in key_file.resolve().parents
  assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
  class_names = tuple(json.loads((data_root / "manifest.json").read_text())["config"]["words"]) \
      if (data_root / "manifest.json").exists() else None
  loaded, manifest = keyfile.load_keys(key_file)
  assert loaded.waveforms.shape[0] == summary["keys"]["num_keys"]
  assert [manifest["class_names"][i] for i in np.asarray(loaded.labels)] == summary["keys"]["labels"]
  if class_names is not None:
    assert sorted(manifest["class_names"]) == sorted(class_names)
  wavs = sorted((workdir / "keys" / "keys_wav").glob("*.wav"))
  assert len(wavs) == summary["keys"]["num_keys"]
  assert all(stat.S_IMODE(w.stat().st_mode) == 0o600 for w in wavs)


def test_stages_rerun_alone_from_their_launchers(demo_run, tmp_path):
  workdir, _, env = demo_run
  out = _run("launch.make_corpus", "--config=launch/configs/corpus.py:tiny",
             f"--workdir={tmp_path / 'corpus'}", env=env)
  data = json.loads((tmp_path / "corpus" / "data.json").read_text())
  demo = json.loads((workdir / "demo_summary.json").read_text())
  assert data["root"] == demo["data"]["root"]  # the cached corpus is found again, not rebuilt
  assert "train" in out
  # Same seed and spec: make_keys regenerates bit-identical keys.
  _run("launch.make_keys", "--config=launch/configs/keys.py:tiny", f"--workdir={tmp_path / 'keys'}",
       env=env)
  from jaxtag.taggants import keyfile
  a, _ = keyfile.load_keys(workdir / "keys" / "keys.npz")
  b, _ = keyfile.load_keys(tmp_path / "keys" / "keys.npz")
  np.testing.assert_array_equal(np.asarray(a.waveforms), np.asarray(b.waveforms))
  np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
  # Re-running the same command reuses the key file untouched; another seed is refused.
  key_file = tmp_path / "keys" / "keys.npz"
  before = (key_file.read_bytes(), key_file.stat().st_mtime_ns)
  out = _run("launch.make_keys", "--config=launch/configs/keys.py:tiny",
             f"--workdir={tmp_path / 'keys'}", env=env)
  assert "reused" in out and (key_file.read_bytes(), key_file.stat().st_mtime_ns) == before
  os.remove(tmp_path / "keys" / "config.json")   # Past the workdir's config check: the file decides.
  proc = subprocess.run([sys.executable, "-m", "launch.make_keys",
                         "--config=launch/configs/keys.py:tiny", "--config.seed=1",
                         f"--workdir={tmp_path / 'keys'}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and "provenance.seed" in proc.stderr, proc.stderr[-2000:]
  assert str(key_file) in proc.stderr and "never overwritten" in proc.stderr
  assert (key_file.read_bytes(), key_file.stat().st_mtime_ns) == before


def test_key_file_refused_inside_dataset(demo_run, tmp_path):
  workdir, _, env = demo_run
  demo = json.loads((workdir / "demo_summary.json").read_text())
  inside = pathlib.Path(demo["data"]["root"]) / "secret"
  cmd = [sys.executable, "-m", "launch.make_keys", "--config=launch/configs/keys.py:tiny",
         f"--workdir={inside}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "inside" in (proc.stderr + proc.stdout).lower()
  assert not (inside / "keys.npz").exists()


def test_craft_launcher_retrains_the_surrogate_with_its_recipe(demo_run, tmp_path):
  """`--config.retrain_rounds`: the surrogate is trained again mid-craft, with the recipe and
  seed recorded in its workdir, on the protected training set, and the craft still delivers."""
  workdir, _, env = demo_run
  out_dir = tmp_path / "craft"
  _run("launch.craft", "--config=launch/configs/craft.py:tiny", f"--workdir={out_dir}",
       f"--config.surrogate={workdir / 'surrogate'}",
       f"--config.key_file={workdir / 'keys' / 'keys.npz'}",
       "--config.budget=0.25", "--config.retrain_rounds=1", "--config.craft.restarts=1",
       env=env)   # the tiny corpus has 8 training clips: 2 poisons for its 2 keys
  retrained = out_dir / "retrain_0" / "surrogate_0"
  assert (retrained / "final").is_dir() and (retrained / "model.json").exists()
  recipe = json.loads((workdir / "surrogate" / "config.json").read_text())
  again = json.loads((retrained / "config.json").read_text())
  assert again["seed"] == recipe["seed"] and again["model"] == recipe["model"]
  assert list((out_dir / "craft_ckpt").glob("retrain_0.npy"))
  report = json.loads((out_dir / "craft_report.json").read_text())
  floor = json.loads((out_dir / "config.json").read_text())["craft"]["snr_db"]
  assert report["num_poisons"] > 0 and report["snr_db_min"] >= floor - 1e-6


def test_cost_line_reads_the_paired_cost_and_says_when_there_is_none():
  from jaxtag.taggants import demo
  line = demo._cost_line({"cost": 0.011, "low": -0.001, "high": 0.024, "confidence": 0.95,
                          "control_accuracy": 0.923, "treated_accuracy": 0.912, "num_clips": 1750,
                          "control_only": 40, "treated_only": 21, "p_value": 0.02})
  assert line.startswith("test-accuracy cost of the protection: +1.1 points (benign 92.3% - "
                         "suspect 91.2% on 1750 test clips; paired 95% interval [-0.1, +2.4]")
  assert "40 clips right only under the benign model, 21 only under the suspect" in line
  assert "not measured (the data has no test split)" in demo._cost_line(None)
