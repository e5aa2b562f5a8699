r"""Stage: watermark a speaker-verification dataset with CBW and publish it in its input layout.

  .venv/bin/python -m launch.cbw_protect --config=launch/configs/cbw_protect.py \
      --workdir=workdirs/cbw_protect --config.surrogate_workdir=workdirs/cbw_demo/surrogate \
      --config.output_root=workdirs/cbw_protected

The owner's surrogate speaker model embeds every training speaker; their mean embeddings are
clustered (k-means, seeded from `seed`); each cluster gets a tone trigger at a mel band's centre
frequency, implanted into `watermark.utterance_fraction` of each of its speakers' utterances.
The secret `<workdir>/cbw_secret.npz` (0o600, SHA-256 manifest) holds the clusters and triggers;
it is refused inside the source or output folder and never overwritten silently. The protected
copy keeps the input's layout; only the triggered files differ. `<workdir>/cbw_protect.json`
comes last; a re-run with the same config reuses a finished run and an interrupted one reuses
its secret. The library entry point: `jaxtag.cbw.jobs.run_cbw_protect_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.cbw import jobs
  summary = jobs.run_cbw_protect_job(job, workdir, runtime=app.runtime())
  q = summary["quality"]
  print(f"protected dataset: {summary['output_root']} ({summary['triggered']} of "
        f"{summary['train_utterances']} training utterances carry one of "
        f"{summary['num_clusters']} triggers)")
  print(f"secret file (keep it private): {summary['secret_file']}")
  print(f"triggered utterances: SNR median {q['clip_snr_db']['median']} dB, PESQ "
        f"{(q['pesq_wb'] or {}).get('median')}")


if __name__ == "__main__":
  from jaxtag.cbw.jobs import FLAG_OWNERS, CbwProtectJob
  app.run(main, job=CbwProtectJob, owners=FLAG_OWNERS)
