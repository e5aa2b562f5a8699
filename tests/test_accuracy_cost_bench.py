"""jaxtag.taggants.blackbox.paired_cost and benchmarks/accuracy_cost.py: the paired accuracy cost
per held-out split and pooled."""

import pytest
import tiny_classifier as tc

from benchmarks import accuracy_cost
from jaxtag import stats, train
from jaxtag.data.dataset import AudioDataset
from jaxtag.taggants import blackbox


def test_paired_cost_per_split_and_pooled_from_the_boxes_answers(tiny_workdir, tiny_box):
  early = blackbox.LocalBlackBox(tiny_workdir, step=train.checkpoint_steps(tiny_workdir)[0],
                                 batch_size=4)
  sets = {}
  for name, seed in (("a", 11), ("b", 12)):
    x, y = tc.tone_clips(9, seed=seed)
    sets[name] = AudioDataset(x, y, tc.CLASSES, tc.SR)
  result = blackbox.paired_cost(early, tiny_box, sets)   # the early model as the "suspect"
  flags = {name: {role: box.top_k(d.waveforms, 1)[:, 0] == d.labels
                  for role, box in (("s", early), ("b", tiny_box))} for name, d in sets.items()}
  for name in sets:
    assert result["splits"][name] == stats.accuracy_cost(flags[name]["b"], flags[name]["s"])
  pooled = result["pooled"]
  assert pooled["num_clips"] == 18
  assert pooled["control_only"] == sum(r["control_only"] for r in result["splits"].values())
  assert pooled["treated_only"] == sum(r["treated_only"] for r in result["splits"].values())
  assert pooled["control_only"] + pooled["treated_only"] > 0   # the two models do differ here
  same = blackbox.paired_cost(tiny_box, tiny_box, sets)["pooled"]
  assert same["cost"] == 0 and same["control_only"] == same["treated_only"] == 0
  table = accuracy_cost.format_table(result)
  assert "| pooled | 18 |" in table and table.count("\n") == 4
  with pytest.raises(ValueError, match="no dataset"):
    blackbox.paired_cost(early, tiny_box, {})
  x, y = tc.tone_clips(2, seed=13)
  with pytest.raises(ValueError, match="'other rate' is at 16000 Hz"):
    blackbox.paired_cost(early, tiny_box, {"other rate": AudioDataset(x, y, tc.CLASSES, 16000)})


@pytest.mark.parametrize("argv, match", [
    (["--splits", "train"], "never train"),
    (["--corpus_seeds", "0,x"], "--corpus_seeds: 'x' is not an integer"),
])
def test_arguments_are_checked(argv, match, capsys):
  with pytest.raises(SystemExit):
    accuracy_cost._parse(["--suspect", "s", "--benign", "b", *argv])
  assert match in capsys.readouterr().err
