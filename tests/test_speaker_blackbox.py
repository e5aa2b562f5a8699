"""jaxtag.speaker.blackbox and the speaker endpoint of jaxtag.serving: the local box's scores and
decisions, the HTTP box against a running server, the endpoint's errors, and ServeJob's task.

A fake embedder (a fixed random projection of a log-spectrum) stands in for the trained
``SpeakerEmbedder``: the boxes and the server only use its attributes and ``embed``.
"""

import base64
import concurrent.futures
import http.client
import io
import json
import re
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from jaxtag import serving
from jaxtag.audio.io import AudioFileError, fit_length
from jaxtag.serving import job as serve_job
from jaxtag.speaker import blackbox
from jaxtag.taggants.blackbox import BlackBoxError

SR = 8000
CLIP = 1600
MAX_ENROL = 4
MAX_QUERIES = 6
MAX_BYTES = 64 * 1024


class FakeEmbedder:
  """What ``SpeakerEmbedder`` offers: unit-norm rows from a projection of the log-spectrum."""

  sample_rate = SR
  clip_samples = CLIP
  embedding_dim = 16

  def __init__(self, threshold=0.5, seed=0):
    self.threshold = threshold
    self.projection = np.random.default_rng(seed).standard_normal((CLIP // 2 + 1, 16))
    self.batches = []   # rows per embed call
    self.lock = None    # when set, each call records whether it holds this lock
    self.held = []

  def embed(self, waveforms):
    x = np.asarray(waveforms)
    assert x.dtype == np.float32 and x.shape[1:] == (CLIP,), (x.dtype, x.shape)
    self.batches.append(len(x))
    if self.lock is not None:
      self.held.append(self.lock.locked())
    spectrum = np.log(np.abs(np.fft.rfft(x, axis=-1)) + 1e-3)
    e = (spectrum - spectrum.mean(axis=1, keepdims=True)) @ self.projection
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def voices(speakers, seed: int, length: int = CLIP) -> np.ndarray:
  """One clip per entry of ``speakers``: a speaker's harmonic voice in noise, 16-bit exact."""
  r = np.random.default_rng(seed)
  t = np.arange(length) / SR
  clips = []
  for s in speakers:
    f0 = 110.0 + 45.0 * s
    x = sum(np.sin(2 * np.pi * h * f0 * t + r.uniform(0, 6)) / h for h in range(1, 6))
    clips.append(0.2 * x + 0.02 * r.standard_normal(length))
  return (np.round(np.stack(clips) * 32768) / 32768).astype(np.float32)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


ENROL = voices([0, 0, 0], seed=1, length=CLIP + 300)           # longer: cropped to CLIP
QUERIES = voices([0, 0, 1, 2, 3, 0, 4, 1], seed=2, length=CLIP - 400)  # shorter: zero-padded


def direct_scores(embedder, enrol, queries):
  e = embedder.embed(fit_length(enrol, CLIP))
  q = embedder.embed(fit_length(queries, CLIP))
  return unit(q.astype(np.float64)) @ unit(unit(e.astype(np.float64)).mean(axis=0))


def test_local_score_is_the_cosine_with_the_enrolment_centroid():
  embedder = FakeEmbedder()
  box = blackbox.LocalSpeakerBlackBox(embedder)
  assert isinstance(box, blackbox.SpeakerBlackBox) and isinstance(embedder, blackbox.Embedder)
  assert (box.mode, box.sample_rate, box.clip_samples) == ("score", SR, CLIP)
  scores = box.verify(ENROL, QUERIES)
  assert embedder.batches == [len(ENROL) + len(QUERIES)]  # enrolment and queries in one call
  assert scores.dtype == np.float32 and scores.shape == (len(QUERIES),)
  np.testing.assert_allclose(scores, direct_scores(embedder, ENROL, QUERIES), atol=1e-6)
  # The fake is a usable model: the enrolled speaker's queries (0, 1, 5) score above the others.
  assert scores[[0, 1, 5]].min() > scores[[2, 3, 4, 6, 7]].max()


def test_decision_is_score_at_threshold_and_shows_no_score():
  embedder = FakeEmbedder()
  scores = blackbox.LocalSpeakerBlackBox(embedder).verify(ENROL, QUERIES)
  threshold = float(np.median(scores))
  box = blackbox.LocalSpeakerBlackBox(embedder, mode="decision", threshold=threshold)
  decisions = box.verify(ENROL, QUERIES)
  assert decisions.dtype == bool and decisions.shape == scores.shape
  np.testing.assert_array_equal(decisions, scores >= threshold)
  assert 0 < decisions.sum() < len(decisions)
  # No threshold given: the model's recorded one.
  recorded = blackbox.LocalSpeakerBlackBox(FakeEmbedder(threshold=float(scores[2])), "decision")
  np.testing.assert_array_equal(recorded.verify(ENROL, QUERIES), scores >= scores[2])
  assert str(threshold)[:6] not in repr(box) and "threshold" not in vars(box)


def test_local_box_refuses_bad_input_and_options_with_clear_errors():
  box = blackbox.LocalSpeakerBlackBox(FakeEmbedder())
  nan = QUERIES.copy()
  nan[2, 5] = np.nan
  cases = [(np.zeros((0, CLIP), np.float32), QUERIES, "enrol: no clips"),
           (ENROL, QUERIES[0], r"queries: expected a 2-D waveform"),
           (ENROL[None], QUERIES, r"enrol: expected a 2-D waveform"),
           (ENROL, nan, r"queries: .*NaN or Inf")]
  for enrol, queries, message in cases:
    with pytest.raises(AudioFileError, match=message):
      box.verify(enrol, queries)
  with pytest.raises(ValueError, match="decision mode needs a threshold"):
    blackbox.LocalSpeakerBlackBox(FakeEmbedder(threshold=None), mode="decision")
  with pytest.raises(ValueError, match="mode must be 'score' or 'decision'; got 'scores'"):
    blackbox.LocalSpeakerBlackBox(FakeEmbedder(), mode="scores")
  with pytest.raises(ValueError, match="threshold must be a finite cosine"):
    blackbox.LocalSpeakerBlackBox(FakeEmbedder(), mode="decision", threshold=float("nan"))


class FakeClassifier:
  """A classifier black box with a fixed ranking (for a classify server)."""

  class_names = ("a", "b", "c")
  sample_rate = SR
  clip_samples = CLIP

  def top_k(self, waveforms, k):
    return np.tile(np.arange(3, dtype=np.int32), (len(waveforms), 1))[:, :k]


@pytest.fixture(scope="module")
def servers():
  """A score-mode and a decision-mode speaker server, and a classifier's server."""
  score_embedder = FakeEmbedder(seed=3)
  score_box = blackbox.LocalSpeakerBlackBox(score_embedder)
  threshold = float(np.median(score_box.verify(ENROL, QUERIES)))
  decision_box = blackbox.LocalSpeakerBlackBox(FakeEmbedder(seed=3), "decision", threshold)
  made = {name: serving.make_speaker_server(box, max_enrol=MAX_ENROL, max_queries=MAX_QUERIES,
                                            max_request_bytes=MAX_BYTES, max_seconds=0.5)
          for name, box in (("score", score_box), ("decision", decision_box))}
  made["classify"] = serving.make_server(FakeClassifier())
  score_embedder.lock = made["score"].inference_lock
  for server in made.values():
    server.start()
  try:
    yield made
  finally:
    for server in made.values():
      server.stop()


def request(server, method, path, body=None, content_type="application/json"):
  host, port = server.server_address[:2]
  conn = http.client.HTTPConnection(host, port, timeout=20)
  try:
    conn.request(method, path, body=body, headers={"Content-Type": content_type} if body else {})
    response = conn.getresponse()
    return response.status, json.loads(response.read())
  finally:
    conn.close()


def wav64(x, rate=SR, subtype="PCM_16") -> str:
  buf = io.BytesIO()
  sf.write(buf, np.asarray(x), rate, subtype=subtype, format="WAV")
  return base64.b64encode(buf.getvalue()).decode("ascii")


def verify_body(enrol, queries) -> bytes:
  return json.dumps({"enrol": enrol, "queries": queries}).encode()


def test_info_says_task_mode_and_limits_and_never_the_threshold(servers):
  expected = {"task": "speaker", "mode": "score", "sample_rate": SR, "clip_samples": CLIP,
              "max_enrol": MAX_ENROL, "max_queries": MAX_QUERIES, "max_request_bytes": MAX_BYTES,
              "max_seconds": 0.5}
  assert request(servers["score"], "GET", "/v1/info") == (200, expected)
  assert request(servers["decision"], "GET", "/v1/info") == (200, {**expected, "mode": "decision"})
  assert request(servers["decision"], "GET", "/healthz") == (200, {"status": "ok"})
  assert request(servers["classify"], "GET", "/v1/info")[1]["task"] == "classify"


def test_endpoint_answers_scores_or_decisions_and_nothing_else(servers):
  enrol = [wav64(x) for x in ENROL]
  queries = [wav64(x) for x in QUERIES[:MAX_QUERIES]]
  status, answer = request(servers["score"], "POST", "/v1/speaker/verify",
                           verify_body(enrol, queries))
  assert status == 200 and set(answer) == {"scores"}
  local = blackbox.LocalSpeakerBlackBox(FakeEmbedder(seed=3))
  np.testing.assert_allclose(answer["scores"], local.verify(ENROL, QUERIES[:MAX_QUERIES]),
                             atol=1e-6)
  status, answer = request(servers["decision"], "POST", "/v1/speaker/verify",
                           verify_body(enrol, queries))
  assert status == 200 and set(answer) == {"accept"}
  assert all(isinstance(a, bool) for a in answer["accept"]) and len(answer["accept"]) == 6


def test_http_box_matches_the_local_box_in_both_modes(servers):
  # 13 queries: three requests of at most max_queries.
  queries = np.concatenate([QUERIES, voices([0, 5, 1, 0, 6], seed=4, length=CLIP - 400)])
  for mode in ("score", "decision"):
    remote = blackbox.HttpSpeakerBlackBox(servers[mode].url + "/v1/speaker/verify", timeout=10.0)
    assert isinstance(remote, blackbox.SpeakerBlackBox)
    assert (remote.mode, remote.sample_rate, remote.clip_samples) == (mode, SR, CLIP)
    # The decision server's own box (its threshold is private); a twin of the score server's, so
    # that every call of the score server's embedder is one of the server's.
    local = (servers[mode].blackbox if mode == "decision"
             else blackbox.LocalSpeakerBlackBox(FakeEmbedder(seed=3)))
    got, expected = remote.verify(ENROL, queries), local.verify(ENROL, queries)
    assert got.dtype == expected.dtype and got.shape == (13,)
    if mode == "score":
      np.testing.assert_allclose(got, expected, atol=1e-6)
    else:
      np.testing.assert_array_equal(got, expected)
      assert 0 < got.sum() < len(got)
  # The score server's model calls all held the server's inference lock.
  assert servers["score"].blackbox.embedder.held and all(servers["score"].blackbox.embedder.held)


def test_http_box_splits_queries_to_fit_the_request_size():
  embedder = FakeEmbedder(seed=5)
  local = blackbox.LocalSpeakerBlackBox(embedder)
  # One clip is about 4.3 KB as base64 WAV: two enrolment clips and two queries per request.
  server = serving.make_speaker_server(local, max_request_bytes=20_000)
  with serving.running(server):
    remote = blackbox.HttpSpeakerBlackBox(server.url)
    embedder.batches.clear()
    got = remote.verify(ENROL[:2], QUERIES[:7])
    assert embedder.batches == [4, 4, 4, 3]  # 2 enrolment clips + 2, 2, 2, 1 queries
    np.testing.assert_allclose(got, local.verify(ENROL[:2], QUERIES[:7]), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit in a request of 20000 bytes"):
      remote.verify(ENROL[[0, 1, 2, 0]], QUERIES[:1])


def test_http_box_refuses_a_classifier_and_reports_the_servers_errors(servers):
  with pytest.raises(BlackBoxError, match="serves task 'classify', not speaker verification"):
    blackbox.HttpSpeakerBlackBox(servers["classify"].url)
  remote = blackbox.HttpSpeakerBlackBox(servers["score"].url)
  with pytest.raises(ValueError, match="enrol has 5 clips; the server takes at most 4"):
    remote.verify(voices([0] * 5, seed=6), QUERIES)
  with pytest.raises(AudioFileError, match="HttpSpeakerBlackBox.verify enrol: no clips"):
    remote.verify(np.zeros((0, CLIP), np.float32), QUERIES)


def _bad_requests():
  good = wav64(QUERIES[0])
  nan = QUERIES[1].copy()
  nan[10] = np.nan
  post = "/v1/speaker/verify"
  # (name, method, path, body, content type, status, message)
  return [
      ("bad base64", "POST", post, verify_body([good], [good, "@@not base64@@"]), None, 400,
       r"^queries\[1\]: not valid base64"),
      ("not a wav", "POST", post, verify_body([base64.b64encode(b"hello").decode()], [good]),
       None, 400, r"^enrol\[0\] is not a WAV file"),
      ("nan", "POST", post, verify_body([good], [good, good, wav64(nan, subtype="FLOAT")]), None,
       400, r"^queries\[2\]: .*NaN or Inf"),
      ("wrong rate", "POST", post, verify_body([good, wav64(QUERIES[0], rate=16000)], [good]),
       None, 400, r"^enrol\[1\]: sample rate is 16000 Hz but this model expects 8000 Hz"),
      ("too long", "POST", post, verify_body([good], [wav64(np.zeros(SR, np.float32))]), None,
       413, r"^queries\[0\]: clip is 1.000 s long"),
      ("not a string", "POST", post, verify_body([good], [3]), None, 400,
       r"^queries\[0\]: must be a base64 string"),
      ("text content", "POST", post, verify_body([good], [good]), "text/plain", 415,
       "Content-Type must be application/json; got 'text/plain'"),
      ("wav content", "POST", post, base64.b64decode(good), "audio/wav", 415, "application/json"),
      ("too many queries", "POST", post, verify_body([good], [good] * 7), None, 413,
       r"queries has 7 clips; this API takes at most 6"),
      ("too many enrol", "POST", post, verify_body([good] * 5, [good]), None, 413,
       r"enrol has 5 clips; this API takes at most 4"),
      ("empty enrol", "POST", post, verify_body([], [good]), None, 400, "enrol is empty"),
      ("missing queries", "POST", post, json.dumps({"enrol": [good]}).encode(), None, 400,
       "missing field 'queries'"),
      ("unknown field", "POST", post, json.dumps({"enrol": [good], "queries": [good],
                                                 "threshold": 0}).encode(), None, 400,
       r"unknown field\(s\) \['threshold'\]"),
      ("not a list", "POST", post, json.dumps({"enrol": good, "queries": [good]}).encode(), None,
       400, "enrol must be a list of base64 WAV strings"),
      ("bad json", "POST", post, b'{"enrol": [', None, 400, "not valid JSON"),
      ("json list", "POST", post, b"[1, 2]", None, 400, "must be a JSON object"),
      ("oversized", "POST", post, b"{" + bytes(MAX_BYTES), None, 413,
       f"at most {MAX_BYTES} bytes"),
      ("query param", "POST", post + "?k=3", verify_body([good], [good]), None, 400,
       "takes no query parameters"),
      ("classify path", "POST", "/v1/classify", base64.b64decode(good), "audio/wav", 404,
       r"answers task 'speaker', not /v1/classify; use POST /v1/speaker/verify"),
      ("get verify", "GET", post, None, None, 405, "use POST"),
      ("unknown path", "GET", "/v1/speaker", None, None, 404,
       "no such path '/v1/speaker'; the API has POST /v1/speaker/verify"),
  ]


BAD_REQUESTS = _bad_requests()


@pytest.mark.parametrize("name, method, path, body, content_type, status, message", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_the_right_status_and_a_message_naming_the_item(
    servers, name, method, path, body, content_type, status, message):
  del name
  got_status, answer = request(servers["score"], method, path, body,
                               content_type or "application/json")
  assert got_status == status, answer
  assert set(answer) == {"error"} and re.search(message, answer["error"]), answer


def test_speaker_path_on_a_classifier_server_names_the_classify_endpoint(servers):
  status, answer = request(servers["classify"], "POST", "/v1/speaker/verify",
                           verify_body([wav64(ENROL[0])], [wav64(QUERIES[0])]))
  assert status == 404
  assert "answers task 'classify', not /v1/speaker/verify; use POST /v1/classify?k=3" in \
      answer["error"]  # default k 5, capped at the 3 classes


def test_concurrent_requests_answer_like_sequential_ones(servers):
  enrol = [wav64(x) for x in ENROL]
  bodies = [verify_body(enrol, [wav64(q) for q in QUERIES[i:i + 3]]) for i in range(6)]
  sequential = [request(servers["decision"], "POST", "/v1/speaker/verify", b)[1] for b in bodies]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    parallel = list(pool.map(
        lambda b: request(servers["decision"], "POST", "/v1/speaker/verify", b)[1], bodies))
  assert parallel == sequential and all(set(a) == {"accept"} for a in parallel)


@pytest.mark.parametrize("field, value, message", [
    ("task", "nope", "ServeJob.task must be 'classify' or 'speaker'; got 'nope'"),
    ("speaker_mode", "scores", "ServeJob.speaker_mode must be 'score' or 'decision'"),
    ("speaker_threshold", float("inf"), "ServeJob.speaker_threshold must be a finite cosine"),
    ("speaker_max_queries", 0, "ServeJob.speaker_max_queries must be positive"),
])
def test_serve_job_refuses_bad_speaker_options(field, value, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    serve_job.ServeJob(**{field: value})


@pytest.fixture
def fake_loader(monkeypatch):
  """``jaxtag.speaker.embedder.load_embedder`` returning a fake embedder (recorded per path)."""
  loaded = {}

  def load_embedder(workdir, *, batch_size=64):
    del batch_size
    loaded[workdir] = FakeEmbedder(threshold=None if "nothreshold" in workdir else 0.25)
    return loaded[workdir]

  module = types.ModuleType("jaxtag.speaker.embedder")
  module.load_embedder = load_embedder
  monkeypatch.setitem(sys.modules, "jaxtag.speaker.embedder", module)
  return loaded


def test_build_server_serves_a_speaker_model_with_its_recorded_threshold(fake_loader):
  job = serve_job.ServeJob(task="speaker", model_workdir="w/speaker", port=0,
                           speaker_mode="decision", speaker_max_queries=9)
  server = serve_job.build_server(job)
  try:
    assert server.info() == {"task": "speaker", "mode": "decision", "sample_rate": SR,
                             "clip_samples": CLIP, "max_enrol": 32, "max_queries": 9,
                             "max_request_bytes": serving.DEFAULT_MAX_REQUEST_BYTES,
                             "max_seconds": 10.0}
    scores = direct_scores(fake_loader["w/speaker"], ENROL, QUERIES)
    np.testing.assert_array_equal(server.blackbox.verify(ENROL, QUERIES), scores >= 0.25)
  finally:
    server.stop()
  given = serve_job.build_server(serve_job.ServeJob(
      task="speaker", model_workdir="w/speaker", port=0, speaker_mode="decision",
      speaker_threshold=float(scores[3])))
  given.stop()
  np.testing.assert_array_equal(given.blackbox.verify(ENROL, QUERIES), scores >= scores[3])
  with pytest.raises(ValueError, match="records no EER threshold.*ServeJob.speaker_threshold"):
    serve_job.build_server(serve_job.ServeJob(task="speaker", model_workdir="w/nothreshold",
                                              port=0, speaker_mode="decision"))


def test_http_box_refuses_an_answer_that_is_not_its_modes(servers):
  decision = blackbox.HttpSpeakerBlackBox(servers["decision"].url)
  np.testing.assert_array_equal(decision._parse_answer({"accept": [True, False]}, 2), [1, 0])
  for leaky in ({"accept": [0.7, 0.1]}, {"accept": [True, False], "scores": [0.7, 0.1]},
                {"scores": [0.7, 0.1]}, {"accept": [True]}):
    with pytest.raises(BlackBoxError, match=r"expected \{'accept': \[2 booleans\]\}"):
      decision._parse_answer(leaky, 2)
  score = blackbox.HttpSpeakerBlackBox(servers["score"].url)
  with pytest.raises(BlackBoxError, match=r"expected \{'scores': \[1 numbers\]\}"):
    score._parse_answer({"scores": [True]}, 1)


def test_speaker_preset_of_the_serve_config_is_a_speaker_job():
  from jaxtag import config as config_lib
  from launch.configs import serve as serve_config
  job = config_lib.from_config(serve_job.ServeJob, serve_config.get_config("speaker"))
  assert (job.task, job.speaker_mode, job.model_workdir) == ("speaker", "score", "workdirs/speaker")
  assert job.max_request_bytes == serve_config.SPEAKER_MAX_REQUEST_BYTES
  assert config_lib.from_config(serve_job.ServeJob, serve_config.get_config()).task == "classify"
  with pytest.raises(ValueError, match="unknown preset 'speakers'"):
    serve_config.get_config("speakers")


def test_open_speaker_blackbox_picks_the_box_for_a_url_or_a_workdir(servers, fake_loader,
                                                                     tmp_path):
  remote = blackbox.open_speaker_blackbox(servers["decision"].url, timeout=5.0)
  assert isinstance(remote, blackbox.HttpSpeakerBlackBox) and remote.mode == "decision"
  assert remote.client.timeout == 5.0
  with pytest.raises(ValueError, match="serves decision mode, not score"):
    blackbox.open_speaker_blackbox(servers["decision"].url, mode="score")
  with pytest.raises(ValueError, match="keeps its own threshold"):
    blackbox.open_speaker_blackbox(servers["score"].url, threshold=0.5)
  local = blackbox.open_speaker_blackbox(tmp_path, mode="decision", threshold=0.1)
  assert isinstance(local, blackbox.LocalSpeakerBlackBox) and local.mode == "decision"
  scores = direct_scores(fake_loader[str(tmp_path)], ENROL, QUERIES)
  np.testing.assert_array_equal(local.verify(ENROL, QUERIES), scores >= 0.1)
  assert blackbox.open_speaker_blackbox(str(tmp_path)).mode == "score"
  with pytest.raises(FileNotFoundError, match="neither an http"):
    blackbox.open_speaker_blackbox(tmp_path / "missing")
  with pytest.raises(ValueError, match="unsupported scheme 'ftp'"):
    blackbox.open_speaker_blackbox("ftp://host/model")
