"""benchmarks/taggant_epochs.py: the black-box test at every kept epoch of a suspect and its
benign control, on two tiny models trained with every epoch kept."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tiny_classifier as tc

from benchmarks import taggant_epochs
from jaxtag import sharding, train
from jaxtag.data.dataset import AudioDataset
from jaxtag.taggants import blackbox, diagnostics, keyfile, verify
from jaxtag.taggants import keys as keys_lib


def _train(workdir, x, y, epochs=3):
  config = train.TrainConfig(
      model="cnn", model_overrides={"channels": [8, 16], "n_mels": 32, "sample_rate": tc.SR,
                                  "dropout_rate": 0.0},
      num_epochs=epochs, batch_size=8, eval_batch_size=8, log_every_steps=4, max_to_keep=10,
      optim=train.OptimConfig(learning_rate=1e-2, warmup_steps=0))
  train.train(config, train_data=AudioDataset(x, y, tc.CLASSES, tc.SR), key=jax.random.key(1),
              workdir=workdir, mesh=sharding.make_mesh(1), progress=False)
  (workdir / "config.json").write_text(json.dumps({"num_epochs": epochs}))   # as launchers do


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  root = tmp_path_factory.mktemp("epochs")
  x, y = tc.tone_clips(32, seed=41)
  spec = keys_lib.KeySpec(num_keys=4, d=8, sample_rate=tc.SR, clip_samples=tc.CLIP, n_fft=256,
                          win_length=200, hop_length=80, n_mels=32, griffin_lim_iters=4)
  secret = keys_lib.make_keys(jax.random.key(0), spec, num_classes=len(tc.CLASSES))
  key_file = root / "secret" / "keys.npz"
  keyfile.save_keys(key_file, secret, class_names=tc.CLASSES, provenance={})
  # The "suspect" trains on copies of the keys labelled as the keys: it learns them.
  protected_x = np.concatenate([x, np.tile(np.asarray(secret.waveforms), (2, 1))])
  protected_y = np.concatenate([y, np.tile(np.asarray(secret.labels), 2)]).astype(np.int32)
  _train(root / "suspect", protected_x[:40], protected_y[:40])
  _train(root / "benign", np.concatenate([x, x[:8]]), np.concatenate([y, y[:8]]))
  return root, key_file


def test_every_kept_epoch_is_tested_as_verify_tests_the_final_model(pair, tmp_path):
  root, key_file = pair
  out = taggant_epochs.main(["--suspect", str(root / "suspect"), "--benign", str(root / "benign"),
                             "--key_file", str(key_file), "--decision_k", "2", "--max_k", "3",
                             "--out", str(tmp_path / "out" / "epochs")])
  assert out["steps_per_epoch"] == 5 and [r["epoch"] for r in out["epochs"]] == [1, 2, 3]
  assert [r["step"] for r in out["epochs"]] == [5, 10, 15]
  secret, _ = keyfile.load_keys(key_file)
  last = out["epochs"][-1]
  for name in ("suspect", "benign"):
    report = verify.verify(blackbox.LocalBlackBox(root / name, batch_size=4), secret, max_k=3,
                           decision_k=2)
    assert last[name]["p_value"] == pytest.approx(report.p_value)
    assert last[name]["hits"] == list(report.hits)
  # Each epoch is read from its own checkpoint: its hits are the ranks of that checkpoint's
  # white-box scores (other code than the top-k answers).
  for row in out["epochs"]:
    for name in ("suspect", "benign"):
      scores = diagnostics.key_scores(train.restore_step(root / name, row["step"]), secret)
      assert row[name]["hits"] == [int(np.sum(scores.rank <= k)) for k in (1, 2, 3)], row
  written = (tmp_path / "out" / "epochs.json").read_text()
  assert json.loads(written) == json.loads(json.dumps(out))
  assert "labels" not in written
  assert (tmp_path / "out" / "epochs.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_and_unpaired_runs_are_refused(pair, tmp_path, capsys):
  root, key_file = pair
  with pytest.raises(SystemExit):
    taggant_epochs.main(["--suspect", "a", "--benign", "b", "--key_file", "k",
                         "--decision_k", "4", "--max_k", "3"])
  assert "--decision_k must lie in [1, --max_k=3]" in capsys.readouterr().err
  x, y = tc.tone_clips(16, seed=3)
  _train(tmp_path / "short", x, y, epochs=1)   # 2 steps per epoch, not 5
  with pytest.raises(ValueError, match="not a paired control"):
    taggant_epochs.main(["--suspect", str(root / "suspect"), "--benign", str(tmp_path / "short"),
                         "--key_file", str(key_file), "--out", str(tmp_path / "x")])
