r"""Stage: evaluate PosCUDA as in the paper's Table 1, plus quality and an attacker check.

  nice -n 15 .venv/bin/python -m launch.poscuda_eval --config=launch/configs/poscuda_eval.py \
      --workdir=workdirs/poscuda_eval

For every model (M5 on raw audio, LSTM on MFCC, Transformer on log-mel) and every training set
(clean, and each protected variant), trains into `<workdir>/runs/<model>/<variant>/` and tests on
the clean test split and on the test split with the variant's class filters applied. Quality:
SNR of the protected train clips and the Fréchet distance between embeddings of clean and
protected clips, taken from each clean-trained model. Attacker: random blurs or noise at random
positions on a protected train set, then the model is retrained. Writes `poscuda_eval.json`,
`poscuda_eval.txt` and `poscuda_eval.png` (the tables as bars), atomically, the JSON last; a rerun
reuses finished runs, and a rerun of a finished evaluation with the same config (recorded in
`<workdir>/config.json` by the launcher) returns its report without recomputing anything.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any

from launch import app

RESULT_FILE = "poscuda_result.json"
REPORT_FILE = "poscuda_eval.json"
EMBEDDING_NOTE = ("Fréchet distance between Gaussians fitted to embeddings of clean and protected "
                  "train clips, from each row's clean-trained model (trained by jaxtag here; the "
                  "paper's PANN weights cannot be downloaded), so it is not comparable with FAD.")


def parse_variants(text: str) -> list[tuple[str, bool, float]]:
  """``"pos:0.3,nopos:0.01"`` -> ``[("pos_b0.3", True, 0.3), ("nopos_b0.01", False, 0.01)]``."""
  out = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    kind, _, blur = item.partition(":")
    if kind not in ("pos", "nopos") or not blur:
      raise ValueError(f"variants: {item!r} is not 'pos:<b>' or 'nopos:<b>'.")
    out.append((f"{kind}_b{float(blur):g}", kind == "pos", float(blur)))
  return out


def _names(text: str) -> list[str]:
  return [s.strip() for s in text.split(",") if s.strip()]


def _train_config(recipe: Any, eval_batch_size: int):
  from jaxtag import train
  return train.TrainConfig(
      model=recipe.model, model_overrides=app.plain(recipe.model_overrides.to_dict()),
      num_epochs=recipe.num_epochs, batch_size=recipe.batch_size,
      eval_batch_size=eval_batch_size,
      optim=train.OptimConfig(learning_rate=recipe.learning_rate,
                              weight_decay=recipe.weight_decay, warmup_steps=0),
      log_every_steps=100)


class Predictor:
  """Labels and embeddings of a finished run, in fixed-size padded batches (one compilation)."""

  def __init__(self, run_dir: pathlib.Path, batch_size: int):
    import jax

    from jaxtag import train
    trained = train.restore_for_inference(run_dir)
    apply_fn = trained.apply_fn()

    def forward(params, batch_stats, waveforms):
      logits, intermediates, _ = apply_fn(params, batch_stats, waveforms, train=False)
      return jax.numpy.argmax(logits, -1), intermediates["embedding"]

    self._fn = functools.partial(jax.jit(forward), trained.params, trained.batch_stats)
    self.batch_size = batch_size

  def __call__(self, waveforms):
    import numpy as np

    from jaxtag.train import infer
    preds, embeddings = infer.map_padded(self._fn, waveforms, batch_size=self.batch_size)
    return preds, embeddings.astype(np.float64)

  def accuracy(self, waveforms, labels) -> float:
    import numpy as np
    return float(np.mean(self(waveforms)[0] == labels))


def train_run(run_dir: pathlib.Path, recipe: Any, train_data, key, config) -> dict[str, Any]:
  """Trains (or reuses) one run; returns its record (train seconds, steps)."""
  from jaxtag import sharding, train
  done = run_dir / RESULT_FILE
  wanted = json.loads(json.dumps(app.plain(recipe.to_dict())))
  if done.exists():
    record = json.loads(done.read_text())
    if record.setdefault("recipe", wanted) != wanted:
      raise ValueError(f"{run_dir} was trained with another recipe ({record['recipe']}); delete "
                       "it or use another workdir.")
    return record
  result = train.train(_train_config(recipe, config.eval_batch_size), train_data=train_data,
                       key=key, workdir=run_dir, mesh=sharding.make_mesh(config.num_devices or None),
                       progress=config.progress, transfer_guard=app.transfer_guard_level())
  record = {"train_seconds": round(result.train_seconds, 1), "epochs": recipe.num_epochs,
            "steps_run": result.steps_run, "recipe": wanted}
  app.write_json(done, record)
  return record


def protect_variants(config: Any, train_split, test_split, key) -> dict[str, dict[str, Any]]:
  """Filters per variant (one key: the same positions and uniform draws for every b)."""
  import dataclasses

  import numpy as np

  from jaxtag import poscuda
  from launch import poscuda_protect
  base = poscuda_protect.spec_from_config(config.spec, train_split)
  out = {}
  for name, use_positions, blur in parse_variants(config.variants):
    spec = dataclasses.replace(base, use_positions=use_positions, blur=blur)
    secret = poscuda.make_filters(key, spec, train_split.num_classes)
    protected = poscuda.apply_in_batches(train_split.waveforms, train_split.labels, secret,
                                         sample_rate=train_split.sample_rate)
    snr = poscuda.snr_in_batches(train_split.waveforms, protected)
    out[name] = {
        "secret": secret, "train": train_split.with_waveforms(protected),
        "test": poscuda.protect_dataset(test_split, secret),
        "snr_db": {"min": float(snr.min()), "p5": float(np.percentile(snr, 5)),
                   "median": float(np.median(snr))}}
  return out


def mixed(secret, part: str):
  """The paper's mixing check: each class gets the next class's filter or patch position."""
  import numpy as np

  from jaxtag import poscuda
  filters, positions = np.asarray(secret.filters), np.asarray(secret.positions)
  if part == "filters":
    filters = np.roll(filters, 1, axis=0)
  elif part == "positions":
    positions = np.roll(positions, 1, axis=0)
  else:
    raise ValueError(f"mixed: part must be 'filters' or 'positions', got {part!r}.")
  return poscuda.PoscudaFilters(filters=filters, positions=positions, spec=secret.spec)


def evaluate_model(name: str, config: Any, data: dict, variants: dict, workdir: pathlib.Path,
                   root_key) -> dict[str, Any]:
  """One Table-1 row: clean and protected trainings of one model, tested clean and filtered."""
  import numpy as np

  from jaxtag import poscuda, rng
  from jaxtag.audio import metrics
  recipe = config.recipes[name]
  key = rng.stream(root_key, f"train_{name}")  # Same init and batch order for every variant.
  row: dict[str, Any] = {"model": recipe.model, "runs": {}}
  clean_dir = workdir / "runs" / name / "clean"
  row["runs"]["clean"] = train_run(clean_dir, recipe, data["train"], key, config)
  clean = Predictor(clean_dir, config.eval_batch_size)
  row["runs"]["clean"]["test"] = clean.accuracy(data["test"].waveforms, data["test"].labels)
  row["runs"]["clean"]["filtered_test"] = {
      v: clean.accuracy(d["test"].waveforms, d["test"].labels) for v, d in variants.items()}
  idx = np.random.default_rng(0).permutation(len(data["train"]))[:config.fd_clips]
  _, clean_emb = clean(data["train"].waveforms[idx])
  for variant, d in variants.items():
    run_dir = workdir / "runs" / name / variant
    record = train_run(run_dir, recipe, d["train"], key, config)
    model = Predictor(run_dir, config.eval_batch_size)
    record["test"] = model.accuracy(data["test"].waveforms, data["test"].labels)
    record["filtered_test"] = model.accuracy(d["test"].waveforms, d["test"].labels)
    if d["secret"].spec.use_positions:  # Which half of the secret does the model read?
      record["mixed_test"] = {part: model.accuracy(
          poscuda.protect_dataset(data["test"], mixed(d["secret"], part)).waveforms,
          data["test"].labels) for part in ("filters", "positions")}
    record["frechet"] = metrics.frechet_distance(clean_emb, clean(d["train"].waveforms[idx])[1])
    row["runs"][variant] = record
  return row


def attack(config: Any, data: dict, variants: dict, workdir: pathlib.Path, root_key,
           rows: dict) -> dict[str, Any]:
  """Random blurs/noise at random positions on a protected set; retrain; is it learnable again?"""
  import numpy as np

  from jaxtag import poscuda, rng
  name, variant = config.attack.model, parse_variants(config.attack.variant)[0][0]
  recipe = config.recipes[name]
  clean_acc = rows[name]["runs"]["clean"]["test"]
  protected_acc = rows[name]["runs"][variant]["test"]
  spec = variants[variant]["secret"].spec
  out = {"model": name, "variant": variant, "clean_trained_test": clean_acc,
         "protected_trained_test": protected_acc, "modes": {}}
  protected = variants[variant]["train"]
  for mode in _names(config.attack.modes):
    attacked = np.concatenate([np.asarray(poscuda.random_patch_attack(
        rng.step_key(rng.stream(root_key, f"attack_{mode}"), start),
        protected.waveforms[start:start + 512], mode=mode, num_patches=config.attack.num_patches,
        patch=spec.patch, taps=spec.taps, noise_snr_db=config.attack.noise_snr_db))
        for start in range(0, len(protected), 512)])
    run_dir = workdir / "runs" / name / f"{variant}_attack_{mode}"
    record = train_run(run_dir, recipe, protected.with_waveforms(attacked),
                       rng.stream(root_key, f"train_{name}"), config)
    record["test"] = Predictor(run_dir, config.eval_batch_size).accuracy(
        data["test"].waveforms, data["test"].labels)
    gap = clean_acc - protected_acc
    record["recovered_fraction"] = (record["test"] - protected_acc) / gap if gap > 0 else None
    record["learnable_again"] = bool(gap > 0 and record["recovered_fraction"] >= 0.5)
    out["modes"][mode] = record
  return out


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.2f}"


def _blur(variant: str) -> str:
  return variant.split("_b", 1)[1]


def _table(report: dict[str, Any], title: str, cell) -> list[str]:
  """One table in the paper's Table 1 layout; ``cell(run, variant or None)`` fills a column."""
  variants = list(report["variants"])
  nopos = [v for v in variants if v.startswith("nopos")]
  pos = [v for v in variants if v.startswith("pos")]
  rows = [["Dataset", "Architecture", "Clean"] + [f"w/o pos b={_blur(v)}" for v in nopos]
          + [f"PosCUDA b={_blur(v)}" for v in pos] + [f"FD b={_blur(v)}" for v in pos]]
  for row in report["rows"].values():
    runs = row["runs"]
    rows.append([report["dataset"], _arch(row["model"]), cell(runs["clean"], None)]
                + [cell(runs[v], v) for v in nopos + pos]
                + [f"{runs[v]['frechet']:.3g}" for v in pos])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  return [title, lines[0], "-+-".join("-" * w for w in widths), *lines[1:]]


def _clean_models_filter(report: dict[str, Any]) -> str | None:
  """The variant whose filters the clean model's filtered test uses in the report (last PosCUDA)."""
  pos = [v for v in report["variants"] if v.startswith("pos")]
  return pos[-1] if pos else None


def format_report(report: dict[str, Any]) -> str:
  """The paper's Table 1 layout (accuracy in %), the class-filtered test, quality and attack."""
  shown = _clean_models_filter(report)

  def filtered(run, variant):
    return _pct(run["filtered_test"] if variant else run["filtered_test"].get(shown))

  lines = [(f"PosCUDA evaluation: {report['dataset']}, {report['num_classes']} classes, "
            f"{report['train_clips']} train / {report['test_clips']} test clips "
            f"(chance {100 / report['num_classes']:.1f}%)."), ""]
  lines += _table(report, "Test accuracy (%) on the clean test set, by training set:",
                  lambda run, variant: _pct(run["test"]))
  lines += [""] + _table(report, (
      "Test accuracy (%) on the class-filtered test set (the variant's filters applied to the "
      f"test clips; 'Clean' column: the clean model on {shown}):"), filtered)
  mixes = [(row["model"], v, r["mixed_test"]) for row in report["rows"].values()
           for v, r in row["runs"].items() if "mixed_test" in r]
  if mixes:
    lines += ["", ("Which half of the secret the protected models read (test clips filtered "
                   "with each class given the next class's filter, or its patch position; "
                   "compare with the class-filtered test):")]
    for model, v, m in mixes:
      lines.append(f"  {_arch(model):22s} {v:10s} filters mixed {_pct(m['filters'])}%  "
                   f"positions mixed {_pct(m['positions'])}%")
  lines += ["", EMBEDDING_NOTE, "", "Quality of the protected train clips (SNR, dB):"]
  for v, q in report["variants"].items():
    lines.append(f"  {v:12s} min {q['snr_db']['min']:7.2f}  p5 {q['snr_db']['p5']:7.2f}  median "
                 f"{q['snr_db']['median']:7.2f}")
  if report.get("attack"):
    a = report["attack"]
    lines += ["", (f"Attacker check ({_arch(report['rows'][a['model']]['model'])} retrained on "
                   f"{a['variant']} after random patches; clean-trained "
                   f"{_pct(a['clean_trained_test'])}%, protected-trained "
                   f"{_pct(a['protected_trained_test'])}%):")]
    for mode, r in a["modes"].items():
      frac = r["recovered_fraction"]
      lines.append(f"  {mode:6s} clean test {_pct(r['test'])}%  recovered "
                   f"{'—' if frac is None else f'{100 * frac:.0f}%'} of the gap: learnability "
                   f"{'comes back' if r['learnable_again'] else 'does not come back'}")
  lines += ["", f"Total wall time {report['wall_seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: pathlib.Path) -> None:
  """Table 1 as bars: each model's accuracy by training set, on clean and class-filtered test.

  Written atomically; matplotlib's Agg renderer, no display.
  """
  import numpy as np

  from jaxtag import plots
  from jaxtag.audio import io as audio_io
  sets = ["clean"] + list(report["variants"])
  shown = _clean_models_filter(report)
  rows = list(report["rows"].values())
  fig = plots.figure(figsize=(min(14, max(8, 1 + 0.8 * len(rows) * len(sets))), 4.2),
                     layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  width = 0.8 / len(sets)
  x = np.arange(len(rows))
  for ax, key, title in ((axes[0], "test", "clean test set"),
                         (axes[1], "filtered_test", "class-filtered test set")):
    for i, name in enumerate(sets):
      values = []
      for row in rows:
        value = row["runs"][name][key]
        values.append(100 * (value.get(shown, np.nan) if isinstance(value, dict) else value))
      ax.bar(x + (i - (len(sets) - 1) / 2) * width, values, width, label=name)
    ax.axhline(100 / report["num_classes"], color="black", linestyle=":", label="chance")
    ax.set_xticks(x, [_arch(row["model"]) for row in rows])
    ax.set_title(title)
    ax.set_ylim(0, 100)
  axes[0].set_ylabel("accuracy (%) by training set")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="trained on")
  fig.suptitle(f"PosCUDA on {report['dataset']} ({report['num_classes']} classes; the clean "
               f"model's filtered test uses {shown})")
  audio_io.write_bytes_atomic(path, plots.png_bytes(fig))


def check_config(config: Any, workdir: pathlib.Path | None = None) -> None:
  """Fails before any training on names that do not match (models, recipes, attack)."""
  del workdir
  variants = [v for v, _, _ in parse_variants(config.variants)]
  models = _names(config.models)
  missing = [m for m in models if m not in config.recipes]
  if not variants or not models or missing:
    raise ValueError(f"poscuda_eval: need variants and models, each model with a recipe in "
                     f"config.recipes (missing: {missing}).")
  if config.attack.model and config.attack.modes:
    attacked = parse_variants(config.attack.variant)[0][0]
    if config.attack.model not in models or attacked not in variants:
      raise ValueError(f"poscuda_eval: attack.model {config.attack.model!r} and attack.variant "
                       f"{config.attack.variant!r} must be among models {models} and variants "
                       f"{config.variants!r} (or set attack.modes='' to skip the attack).")


def _arch(model: str) -> str:
  return {"m5": "CNN (M5, raw audio)", "lstm": "LSTM (MFCC)",
          "transformer": "Transformer (log-mel)"}.get(model, model)


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Everything above; returns the JSON report (also written with its text table)."""
  import jax

  from jaxtag import rng
  from jaxtag.audio import io as audio_io
  from jaxtag.data import sources
  check_config(config)
  done = app.finished(config, workdir, REPORT_FILE)
  if done is not None:
    return done
  start = time.perf_counter()
  source = sources.DataSource(**config.data.to_dict())
  data = {s: sources.load_split(source, s, progress=config.progress) for s in ("train", "test")}
  root_key = app.root_key(config)
  variants = protect_variants(config, data["train"], data["test"], rng.stream(root_key, "poscuda"))
  rows = {name: evaluate_model(name, config, data, variants, workdir, root_key)
          for name in _names(config.models)}
  report = {
      "dataset": f"{source.kind}:{source.preset}" if source.kind == "corpus" else source.kind,
      "num_classes": data["train"].num_classes, "train_clips": len(data["train"]),
      "test_clips": len(data["test"]), "jax": jax.__version__, "embedding_note": EMBEDDING_NOTE,
      "variants": {v: {"spec": d["secret"].spec.to_dict(), "snr_db": d["snr_db"]}
                   for v, d in variants.items()},
      "rows": rows,
  }
  if config.attack.model and config.attack.modes:
    report["attack"] = attack(config, data, variants, workdir, root_key, rows)
  report["wall_seconds"] = round(time.perf_counter() - start, 1)
  audio_io.write_text_atomic(workdir / "poscuda_eval.txt", format_report(report))
  plot_report(report, workdir / "poscuda_eval.png")
  app.write_json(workdir / REPORT_FILE, report)   # Last: the evaluation finished.
  return report


def main(config, workdir):
  report = run_stage(config, workdir)
  print(format_report(report), end="")


if __name__ == "__main__":
  app.run(main, preflight=check_config)
