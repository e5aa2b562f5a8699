"""The taggant map (benchmarks/taggant_map.py): its command line, overrides and seeds, the pure
record and aggregation functions, and one tiny sweep run twice (the second reuses every stage)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks import taggant_map
from benchmarks import taggant_map_records as records
from conftest import ROOT, demo_env
from launch.configs import demo as demo_configs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("argv, named", [
    (["--constraints", "snr,loudness"], "'loudness'"),
    (["--scenarios", "finetune,sideways"], "'sideways'"),
    (["--set", "craft.bugdet=0.1"], "craft.bugdet"),
    (["--set", "suspect.optim.nope=1"], "suspect.optim.nope"),
    (["--set", "craft.craft.snr_db=30"], "the sweep sets this field itself"),
    (["--set", "craft.budget=lots"], "craft.budget=lots"),
    (["--set", "craft.budget"], "expected KEY=VALUE"),
    (["--snr_db", "20,loud"], "'loud' is not a number"),
    (["--seeds", "1000"], "[0, 999]"),
    (["--preset", "huge"], "'huge'"),
    (["--budgets", "0.1,1.5"], "fraction in (0, 1]"),
    (["--budgets", "0.1", "--set", "craft.budget=0.2"], "swept by --budgets"),
])
def test_bad_arguments_fail_before_any_stage_with_a_message_naming_them(tmp_path, capsys, argv,
                                                                          named):
  workdir = tmp_path / "map"
  with pytest.raises(SystemExit) as exit_info:
    taggant_map.main(["--workdir", str(workdir), "--out", str(tmp_path / "out"), *argv])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert named in err, err
  assert not workdir.exists() and not (tmp_path / "out.json").exists()


def test_parse_list_dedupes_and_keeps_order():
  assert taggant_map.parse_list("30, 20,30,,25", float, "--snr_db") == [30.0, 20.0, 25.0]
  with pytest.raises(ValueError, match="no values"):
    taggant_map.parse_list(" , ", float, "--snr_db")
  with pytest.raises(ValueError, match="finite"):
    taggant_map.parse_list("inf", float, "--snr_db")


def test_overrides_set_typed_fields_and_refuse_bad_ones():
  config = demo_configs.get_config("tiny")
  applied = taggant_map.apply_overrides(
      config, ["craft.budget=0.5", "suspect.num_epochs=3", "craft.diagnostics=false",
               "suspect.model=cnn", "craft.craft.augment.noise_snr_db=(10.0, 20.0)"])
  assert applied["craft.budget"] == 0.5 and config.craft.budget == 0.5
  assert config.suspect.num_epochs == 3
  assert config.craft.diagnostics is False and config.suspect.model == "cnn"
  assert tuple(config.craft.craft.augment.noise_snr_db) == (10.0, 20.0)
  with pytest.raises(ValueError, match="is a bool"):
    taggant_map.apply_overrides(config, ["craft.diagnostics=maybe"])
  with pytest.raises(ValueError, match="block of fields"):
    taggant_map.apply_overrides(config, ["craft.craft=1"])
  with pytest.raises(ValueError, match="no field 'nosuch'"):
    taggant_map.apply_overrides(config, ["nosuch=1"])


def test_seed_zero_is_the_demo_and_a_seed_shifts_only_the_owner_and_suspect_seeds():
  config = demo_configs.get_config("tiny,finetune")
  same = taggant_map.seeded_config(config, 0)
  assert same.to_json_best_effort(sort_keys=True) == config.to_json_best_effort(sort_keys=True)
  shifted = taggant_map.seeded_config(config, 3)
  for dotted in taggant_map.SEEDED:
    old, new = config, shifted
    for part in dotted.split("."):
      old, new = old[part], new[part]
    assert new == old + 3, dotted
  assert shifted.backbone.seed == config.backbone.seed   # the public model does not move
  assert shifted.data.to_dict() == config.data.to_dict()
  assert config.seed == 0   # the input is not changed


def test_point_config_sets_the_constraint_and_its_own_field_only():
  config = demo_configs.get_config("tiny")
  snr = taggant_map.point_config(config, "snr", 30.0)
  assert (snr.craft.craft.constraint, snr.craft.craft.snr_db) == ("snr", 30.0)
  assert snr.craft.craft.mask_db == config.craft.craft.mask_db
  mask = taggant_map.point_config(config, "stft_mask", 12.5)
  assert (mask.craft.craft.constraint, mask.craft.craft.mask_db) == ("stft_mask", 12.5)
  assert mask.craft.craft.snr_db == config.craft.craft.snr_db
  assert records.point_name("stft_mask", 12.5) == "stft_mask_12.5"
  assert records.point_name("snr", 20.0) == "snr_20"
  budget = taggant_map.point_config(config, "snr", 5.0, 0.08)
  assert budget.craft.budget == 0.08 and config.craft.budget != 0.08
  assert taggant_map.point_config(config, "snr", 5.0).craft.budget == config.craft.budget
  assert records.point_name("snr", 5.0, 0.08) == "snr_5_b0.08"


# ---------------------------------------------------------------------------------- records


def _model(p, top1, top5, decision=False):
  return {"p_value": p, "floor": 1e-9, "decision": decision, "decision_k": 1,
          "key_top1": top1, "key_top5": top5, "test_accuracy": 0.9}


def _point(constraint="snr", scenario="finetune", seed=0, db=20.0, snr=21.0, p=0.01, top1=0.5,
           top5=1.0, budget=0.1):
  return {"constraint": constraint, "scenario": scenario, "seed": seed, "grid_db": db,
          "budget": budget,
          "snr_db_median": snr, "suspect": _model(p, top1, top5), "benign": _model(0.9, 0, 0.1),
          "key_label_shift": {"mean": 0.2, "others": 0.1, "specific": 0.1 if snr else None}}


def test_key_accuracy_reads_cumulative_hits_and_caps_k():
  report = {"hits": [1, 3, 4], "num_keys": 4}
  assert records.key_accuracy(report, 1) == 0.25
  assert records.key_accuracy(report, 2) == 0.75
  assert records.key_accuracy(report, 5) == 1.0   # only 3 labels read: top-3


def test_model_record_takes_the_verdict_report_and_test_accuracy():
  verdict = {"p_value": 1e-4, "floor": 1e-6, "decision": True, "decision_k": 1,
             "text": "names the labels"}
  out = records.model_record(verdict, {"hits": [2, 4], "num_keys": 4},
                             {"test/accuracy": 0.8, "steps": 10})
  assert out == {"p_value": 1e-4, "floor": 1e-6, "decision": True, "decision_k": 1,
                 "key_top1": 0.5, "key_top5": 1.0, "test_accuracy": 0.8}


def test_point_record_reads_the_quality_block_and_falls_back_without_one():
  effect = {"mean": 0.3, "others": 0.2, "specific": 0.1, "min": -1.0, "max": 1.0,
            "delta_log_prob": [0.3], "rank_treated": [1]}
  crafted = {"num_poisons": 4, "num_train": 40, "budget": 0.1, "snr_db_min": 30.0,
             "snr_db_median": 31.0, "loss_initial_mean": 0.9, "loss_final_mean": 0.5,
             "quality": {"clip_snr_db": {"min": 30.2, "median": 31.4, "mean": 31, "max": 33},
                         "dataset_snr_db": 45.1, "pesq_wb": {"median": 4.1, "min": 3.9},
                         "stoi": None}}
  kwargs = dict(scenario="scratch", seed=1, constraint="stft_mask", grid_db=20.0,
                suspect=_model(0.01, 0.5, 1.0), benign=_model(0.9, 0.0, 0.25), effect=effect)
  point = records.point_record(crafted=crafted, **kwargs)
  assert (point["snr_db_median"], point["snr_db_min"]) == (31.4, 30.2)   # measured, not crafted
  assert (point["dataset_snr_db"], point["pesq_wb_median"], point["stoi_median"]) == (
      45.1, 4.1, None)
  assert point["grid_field"] == "craft.craft.mask_db"
  assert point["key_label_shift"] == {"mean": 0.3, "others": 0.2, "specific": 0.1, "min": -1.0,
                                      "max": 1.0}
  assert point["suspect"]["p_value"] == 0.01 and point["benign"]["key_top5"] == 0.25
  json.dumps(point, allow_nan=False)
  old = {k: v for k, v in crafted.items() if k != "quality"}
  old["snr_db_min"] = math.inf   # nothing perturbed: no finite SNR
  point = records.point_record(crafted=old, **kwargs)
  assert point["snr_db_median"] == 31.0 and point["snr_db_min"] is None
  assert point["dataset_snr_db"] is None and point["pesq_wb_median"] is None


def test_series_takes_the_median_over_seeds_sorted_by_measured_snr():
  points = [_point(db=40.0, snr=41.0, p=0.5, top1=0.0, top5=0.5),
            _point(db=20.0, seed=0, snr=21.0, p=0.001, top1=1.0),
            _point(db=20.0, seed=1, snr=23.0, p=0.1, top1=0.5),
            _point(db=20.0, seed=2, snr=22.0, p=0.01, top1=0.0),
            _point(constraint="stft_mask", db=20.0, snr=None),      # nothing perturbed: left out
            _point(scenario="scratch", db=20.0, snr=25.0),
            _point(db=20.0, snr=20.5, budget=0.05)]                  # another budget: its own line
  lines = records.series(points)
  assert set(lines) == {("snr", "finetune", 0.1), ("snr", "scratch", 0.1),
                        ("snr", "finetune", 0.05)}
  assert [r["snr_db"] for r in lines[("snr", "finetune", 0.05)]] == [20.5]
  low, high = lines[("snr", "finetune", 0.1)]
  assert (low["grid_db"], low["snr_db"], low["p_value"], low["seeds"]) == (20.0, 22.0, 0.01, 3)
  assert low["key_top1"] == pytest.approx(0.5)
  assert (high["grid_db"], high["snr_db"], high["key_top5"]) == (40.0, 41.0, 0.5)


def test_plot_and_table():
  points = [_point(seed=s, db=db, snr=db + s, p=10 ** -db / 10, top1=db / 40)
            for s in (0, 1) for db in (20.0, 40.0)] + [_point(constraint="stft_mask", snr=None)]
  png = records.plot_map(points, alpha=1e-3, title="test")
  assert png.startswith(PNG_MAGIC) and len(png) > 10_000
  points[0]["accuracy_cost"] = {"cost": 0.011, "low": 0.002, "high": 0.02}
  png = records.plot_map(points + [_point(budget=0.05)], alpha=1e-3)   # a budget per line
  assert png.startswith(PNG_MAGIC)
  table = records.format_table(points).splitlines()
  assert len(table) == 1 + len(points) and "snr_20" in table[1] and "+0.100" in table[1]
  assert table[1].split()[3] == "10%" and table[1].endswith("+1.1 [+0.2, +2.0]")
  # SNR, shift and cost unknown:
  assert table[-1].split()[4] == "n/a" and table[-1].endswith("n/a  n/a")


# ------------------------------------------------------------------------------- the sweep


def _sweep(workdir, out, env, *extra):
  command = [sys.executable, "benchmarks/taggant_map.py", "--workdir", str(workdir),
             "--preset", "tiny", "--scenarios", "finetune", "--snr_db", "20,40", "--seeds", "0",
             "--out", str(out), *extra]
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tiny_sweep_records_every_point_and_a_rerun_reuses_every_stage(tmp_path):
  env = demo_env(tmp_path / "data")
  workdir, out = tmp_path / "map", tmp_path / "results" / "map"
  first = _sweep(workdir, out, env)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  result = json.loads(out.with_suffix(".json").read_text())
  assert result["complete"] and result["preset"] == "tiny"
  assert {"date", "versions", "device", "platform"} <= set(result["environment"])
  assert result["environment"]["versions"]["jax"]
  assert [(p["constraint"], p["grid_db"]) for p in result["points"]] == [
      ("snr", 20.0), ("snr", 40.0)]
  for p in result["points"]:
    for model in ("suspect", "benign"):
      assert 0.0 <= p[model]["p_value"] <= 1.0 and math.isfinite(p[model]["p_value"]), p
      assert 0.0 <= p[model]["key_top1"] <= p[model]["key_top5"] <= 1.0, p
      assert 0.0 <= p[model]["test_accuracy"] <= 1.0, p
    assert p["snr_db_min"] <= p["snr_db_median"], p
    assert all(math.isfinite(p["key_label_shift"][k]) for k in ("mean", "others", "specific"))
    # The clip-by-clip cost reproduces the two training runs' own test accuracies.
    cost = p["accuracy_cost"]
    assert cost["treated_accuracy"] == pytest.approx(p["suspect"]["test_accuracy"], abs=1e-6)
    assert cost["control_accuracy"] == pytest.approx(p["benign"]["test_accuracy"], abs=1e-6)
    assert cost["low"] <= cost["cost"] <= cost["high"] and cost["num_clips"] > 0
  low, high = result["points"]
  # The SNR floor holds per poison, and a quieter grid point is measured quieter.
  assert low["snr_db_min"] >= 20.0 - 0.01 and high["snr_db_min"] >= 40.0 - 0.01
  assert high["snr_db_median"] > low["snr_db_median"]
  assert low["benign"] == high["benign"]   # one benign control per (scenario, seed)
  assert out.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
  ran = result["stages"]
  assert set(ran.values()) == {"ran"}, ran
  assert {"corpus", "backbone", "finetune/seed_0/keys", "finetune/seed_0/benign",
          "finetune/seed_0/snr_20/craft", "finetune/seed_0/snr_40/verify_suspect"} <= set(ran)
  assert "[map " in first.stdout and "finetune/seed_0/snr_40/suspect: done (ran" in first.stdout

  again = _sweep(workdir, out, env)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  rerun = json.loads(out.with_suffix(".json").read_text())
  assert rerun["stages"] == {name: "reused" for name in ran}, rerun["stages"]
  assert rerun["points"] == result["points"]
  assert "stages run: 0" in again.stdout

  # Another budget on the same workdir: refused at the craft, naming the field (in one line).
  other = _sweep(workdir, out, env, "--set", "craft.budget=0.5")
  assert other.returncode == 1, other.stderr[-3000:]
  assert "snr_20/craft was made with another config" in other.stderr, other.stderr[-3000:]
  assert "differ from its config.json: budget." in other.stderr, other.stderr[-3000:]
  assert "needs its own --workdir" in other.stderr and "Traceback" not in other.stderr

  # Budgets as an axis on the same workdir: new points only; every shared stage is reused.
  axis_out = tmp_path / "results" / "budgets"
  axis = _sweep(workdir, axis_out, env, "--snr_db", "20", "--budgets", "0.5")
  assert axis.returncode == 0, axis.stdout[-3000:] + axis.stderr[-3000:]
  budgets = json.loads(axis_out.with_suffix(".json").read_text())
  (point,) = budgets["points"]
  assert (point["grid_db"], point["budget"], budgets["budgets"]) == (20.0, 0.5, [0.5])
  assert point["num_poisons"] == 2 * low["num_poisons"]
  assert point["benign"] == low["benign"]
  assert {k for k, v in budgets["stages"].items() if v == "ran"} == {
      f"finetune/seed_0/snr_20_b0.5/{stage}" for stage in ("craft", "suspect", "verify_suspect")}
