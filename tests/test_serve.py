"""jaxtag.serving over loopback HTTP: answers, limits, error codes, HttpBlackBox, the launcher."""

import concurrent.futures
import http.client
import io
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from jaxtag import serving, train
from jaxtag.audio import io as audio_io
from jaxtag.taggants import blackbox

ROOT = pathlib.Path(__file__).resolve().parent.parent
from tiny_classifier import CLASSES, CLIP, SR, tone_clips  # noqa: E402
MAX_BYTES = 64 * 1024
MAX_SECONDS = 1.0


def clips(n: int, seed: int, length: int = CLIP) -> np.ndarray:
  """Tones in noise, rounded to 16-bit values so that a WAV carries them exactly."""
  return tone_clips(n, seed, length)[0]


def wav(x, rate: int = SR, subtype: str = "PCM_16") -> bytes:
  buf = io.BytesIO()
  sf.write(buf, np.asarray(x), rate, subtype=subtype, format="WAV")
  return buf.getvalue()


@pytest.fixture(scope="module")
def server(tiny_box):
  srv = serving.make_server(tiny_box, max_request_bytes=MAX_BYTES, max_seconds=MAX_SECONDS,
                            request_timeout=10.0)
  assert srv.server_address[0] == "127.0.0.1"
  with serving.running(srv):
    yield srv


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None):
  """One request over loopback; returns (status, decoded JSON, headers)."""
  host, port = server.server_address[:2]
  conn = http.client.HTTPConnection(host, port, timeout=20)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    raw = response.read()
    return response.status, (json.loads(raw) if raw else None), dict(response.headers)
  finally:
    conn.close()


def classify(server, body: bytes, query: str = "?k=3", content_type: str = "audio/wav"):
  return request(server, "POST", "/v1/classify" + query, body, {"Content-Type": content_type})


def test_info_and_health(server, tiny_workdir):
  status, info, headers = request(server, "GET", "/v1/info")
  assert status == 200 and headers["Content-Type"] == "application/json"
  assert set(info) == {"task", "sample_rate", "num_classes", "class_names", "clip_samples",
                       "max_k"}
  model_info = train.read_model_info(tiny_workdir)
  assert info == {"task": "classify", "sample_rate": SR, "num_classes": 6,
                  "class_names": list(CLASSES), "clip_samples": CLIP, "max_k": 6}
  assert tuple(info["class_names"]) == model_info.class_names
  assert request(server, "GET", "/healthz")[:2] == (200, {"status": "ok"})


def test_classify_answers_top_k_labels_and_indices_only(server, tiny_box):
  x = clips(4, 1)
  expected = tiny_box.top_k(x, 6)
  for i, clip in enumerate(x):
    for k in (1, 3, 6):
      status, answer, _ = classify(server, wav(clip), f"?k={k}")
      assert status == 200, answer
      assert set(answer) == {"labels", "indices"}  # No logits, scores or anything else.
      assert answer["indices"] == expected[i, :k].tolist()
      assert answer["labels"] == [CLASSES[j] for j in expected[i, :k]]
  # Default k is 5; audio/x-wav and parameters on the content type are accepted.
  status, answer, _ = classify(server, wav(x[0]), "", "audio/x-wav; charset=binary")
  assert status == 200 and answer["indices"] == expected[0, :5].tolist()


def test_http_blackbox_matches_local_blackbox(server, tiny_box):
  x = clips(6, 2, length=CLIP + 300)
  x[4, 1500:] = 0.0  # a clip shorter than the model's, zero-padded by both
  remote = blackbox.open_blackbox(server.url + "/v1/classify", timeout=10.0)
  assert isinstance(remote, blackbox.HttpBlackBox) and isinstance(remote, blackbox.BlackBox)
  assert remote.class_names == CLASSES and remote.sample_rate == SR
  assert remote.clip_samples == CLIP and remote.max_k == 6
  got = remote.top_k(x, 3)
  assert got.dtype == np.int32 and got.shape == (6, 3)
  np.testing.assert_array_equal(got, tiny_box.top_k(x, 3))
  np.testing.assert_array_equal(remote.top_k(x[4:5, :1500], 2), tiny_box.top_k(x[4:5, :1500], 2))
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 6\]"):
    remote.top_k(x, 7)
  with pytest.raises(audio_io.AudioFileError, match="model expects 8000 Hz"):
    remote.top_k(x, 1, sample_rate=16000)
  # A clip the server refuses: its message comes back in the exception.
  with pytest.raises(blackbox.BlackBoxError, match=r"HTTP 413: clip is 1.250 s long") as e:
    remote.top_k(clips(1, 3, length=10000), 1)
  assert e.value.status == 413


def _bad_requests():
  good = clips(1, 4)[0]
  good_wav = wav(good)
  nan_clip = good.copy()
  nan_clip[100] = np.nan
  chunked = {"Content-Type": "audio/wav", "Transfer-Encoding": "chunked"}
  # (name, method, path, body, headers, status, message fragment)
  return [
      ("random bytes", "POST", "/v1/classify", np.random.default_rng(0).bytes(3000),
       None, 400, "not a WAV file"),
      ("truncated", "POST", "/v1/classify", good_wav[:len(good_wav) // 2], None, 400,
       "truncated WAV"),
      ("header only", "POST", "/v1/classify", good_wav[:20], None, 400, "truncated or malformed"),
      ("empty body", "POST", "/v1/classify", b"", None, 400, "not a WAV file"),
      ("empty clip", "POST", "/v1/classify", wav(np.zeros(0, np.float32)), None, 400,
       "0 samples"),
      ("oversized body", "POST", "/v1/classify", b"RIFF" + bytes(MAX_BYTES), None, 413,
       f"at most {MAX_BYTES} bytes"),
      ("too long", "POST", "/v1/classify", wav(np.zeros(int(SR * 1.5), np.float32)), None, 413,
       "at most 1 s"),
      ("wrong rate", "POST", "/v1/classify", wav(good, rate=16000), None, 400,
       "expects 8000 Hz"),
      ("stereo", "POST", "/v1/classify", wav(np.stack([good, good], 1)), None, 400,
       "2 channels"),
      ("nan", "POST", "/v1/classify", wav(nan_clip, subtype="FLOAT"), None, 400, "NaN or Inf"),
      ("k zero", "POST", "/v1/classify?k=0", good_wav, None, 400,
       r"k must be an integer in \[1, 6\]"),
      ("k too big", "POST", "/v1/classify?k=7", good_wav, None, 400, r"\[1, 6\]; got '7'"),
      ("k text", "POST", "/v1/classify?k=abc", good_wav, None, 400, "got 'abc'"),
      ("k float", "POST", "/v1/classify?k=1.5", good_wav, None, 400, "got '1.5'"),
      ("k twice", "POST", "/v1/classify?k=1&k=2", good_wav, None, 400, "given 2 times"),
      ("unknown param", "POST", "/v1/classify?top_k=2", good_wav, None, 400, "takes only k"),
      ("text content", "POST", "/v1/classify", good_wav, {"Content-Type": "text/plain"}, 415,
       "audio/wav"),
      ("no content type", "POST", "/v1/classify", good_wav, {}, 415, "got 'none'"),
      ("chunked", "POST", "/v1/classify", good_wav, chunked, 411, "Content-Length is required"),
      ("get classify", "GET", "/v1/classify", None, {}, 405, "use POST"),
      ("post info", "POST", "/v1/info", good_wav, None, 405, "use GET"),
      ("delete health", "DELETE", "/healthz", None, {}, 405, "use GET"),
      ("unknown path", "GET", "/v2/classify", None, {}, 404, "no such path"),
      ("root", "POST", "/", good_wav, None, 404, "no such path"),
  ]


BAD_REQUESTS = _bad_requests()


def _send_bad(server, method, path, body, headers):
  headers = {"Content-Type": "audio/wav"} if headers is None else dict(headers)
  if headers.get("Transfer-Encoding") == "chunked":
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
      conn.request(method, path, body=iter([body]), headers=headers, encode_chunked=True)
      response = conn.getresponse()
      return response.status, json.loads(response.read()), dict(response.headers)
    finally:
      conn.close()
  return request(server, method, path, body, headers)


@pytest.mark.parametrize("name, method, path, body, headers, status, message", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_documented_codes_and_clear_json_errors(
    server, name, method, path, body, headers, status, message):
  del name
  got_status, answer, got_headers = _send_bad(server, method, path, body, headers)
  assert got_status == status, answer
  assert set(answer) == {"error"} and got_headers["Content-Type"] == "application/json"
  assert re.search(message, answer["error"]), answer
  if status == 405:
    assert got_headers["Allow"] in ("GET", "POST")


def test_server_keeps_answering_after_bad_requests(server, tiny_box):
  x = clips(1, 5)
  for _, method, path, body, headers, status, _ in BAD_REQUESTS:
    assert _send_bad(server, method, path, body, headers)[0] == status
  status, answer, _ = classify(server, wav(x[0]), "?k=4")
  assert status == 200 and answer["indices"] == tiny_box.top_k(x, 4)[0].tolist()


def test_concurrent_requests_answer_like_sequential_ones(server, tiny_box):
  x = clips(8, 6)
  expected = tiny_box.top_k(x, 2).tolist()
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    answers = list(pool.map(lambda clip: classify(server, wav(clip), "?k=2"), x))
  assert [a[1]["indices"] for a in answers] == expected


def test_resample_and_mono_options(tiny_box):
  srv = serving.make_server(tiny_box, on_rate_mismatch="resample", on_stereo="mean", max_k=2,
                            default_k=5)
  x16 = clips(1, 7, length=2 * CLIP)[0]  # read as a 16 kHz clip
  stereo = np.stack([x16, x16], axis=1)
  expected = tiny_box.top_k(audio_io.resample(x16, 16000, SR)[None], 2)[0].tolist()
  with serving.running(srv):
    status, answer, _ = classify(srv, wav(stereo, rate=16000), "")
    assert status == 200 and answer["indices"] == expected  # default k capped at max_k=2
    assert request(srv, "GET", "/v1/info")[1]["max_k"] == 2
    assert classify(srv, wav(x16, rate=16000), "?k=3")[0] == 400
  with pytest.raises(ValueError, match="on_rate_mismatch"):
    serving.make_server(tiny_box, on_rate_mismatch="ignore")
  with pytest.raises(ValueError, match=r"max_k must be in \[1, 6\]"):
    serving.make_server(tiny_box, max_k=9)


# Execs the launcher with SIGINT blocked and ignored: what a server inherits when a script starts it
# with `&` (SIGINT ignored) from a process that blocks SIGINT; both once left it unstoppable.
_BLOCK_AND_IGNORE_SIGINT = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.executable, sys.argv[1:])")


@pytest.mark.parametrize("inherited", ["default", "sigint_blocked_and_ignored"])
def test_launcher_prints_url_serves_and_stops_on_ctrl_c(tiny_workdir, inherited):
  cmd = [sys.executable, "-m", "launch.serve", "--config=launch/configs/serve.py",
         f"--config.model_workdir={tiny_workdir}", "--config.port=0"]
  if inherited != "default":
    cmd = [sys.executable, "-c", _BLOCK_AND_IGNORE_SIGINT] + cmd
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline()  # Blocks until the server is bound (or the launcher died).
    assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
    url = line.split(" at ")[1].split()[0]
    remote = blackbox.HttpBlackBox(url, timeout=20.0)
    assert remote.class_names == CLASSES
    assert remote.top_k(clips(2, 8), 1).shape == (2, 1)
  finally:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)   # about a second on an idle machine
  assert proc.returncode == 0, err[-3000:]
  assert "Server stopped." in out
  assert "POST /v1/classify?k=1 -> 200" in err  # one log line per request


def _raw_exchange(server, data: bytes, *, half_close: bool) -> bytes:
  """Sends raw bytes over one connection (then half-closes if asked); returns all it answers."""
  with socket.create_connection(server.server_address[:2], timeout=20) as sock:
    sock.sendall(data)
    if half_close:
      sock.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := sock.recv(65536):
      answer += chunk
  return answer


def _split_answer(answer: bytes) -> tuple[int, dict]:
  head, _, body = answer.partition(b"\r\n\r\n")
  assert b"application/json" in head.lower(), head
  return int(head.split()[1]), json.loads(body)


def test_half_closing_clients_get_answers_and_a_short_body_400_not_a_silent_close(server):
  status, answer = _split_answer(_raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                                               half_close=True))
  assert (status, answer) == (200, {"status": "ok"})
  body = wav(clips(1, 9)[0])
  request = (b"POST /v1/classify?k=1 HTTP/1.1\r\nHost: t\r\nContent-Type: audio/wav\r\n"
             b"Content-Length: %d\r\n\r\n" % len(body)) + body[:500]
  status, answer = _split_answer(_raw_exchange(server, request, half_close=True))
  assert status == 400
  assert answer == {"error": f"body has 500 bytes but Content-Length says {len(body)}."}


def test_malformed_http_gets_a_json_400(server):
  status, answer = _split_answer(_raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n",
                                               half_close=False))
  assert status == 400 and "malformed HTTP request" in answer["error"]
