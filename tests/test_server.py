"""eoq-server end to end: real subprocesses on free localhost ports, driven by the official `openai`
client and by httpx (for what the client hides: raw bodies, headers, disconnects).

Two servers (SmolLM2-135M, n_ctx 512, one thread per slot, short greedy outputs): `srv` with 4
slots and an API key for the API surface and the concurrency test; `small` with 1 slot and a
queue of 1 for the queue-full, disconnect and SIGTERM tests. Expected outputs come from an
in-process eoq.Engine on the same model (the server must give what the library gives), never
from the server itself.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from eoq import Engine

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-123"
N_CTX = 512
MAX_BODY = 64 * 1024
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
UI_ORIGIN = "http://localhost:3000"  # a header value only: nothing is served there


# --- the server processes -------------------------------------------------------------------

def _server_env():
    env = dict(os.environ)
    if os.environ.get("EOQ_BUILD_DIR"):  # a development build, as conftest.py sets up
        build = str((ROOT / os.environ["EOQ_BUILD_DIR"]).resolve())
        env["PYTHONPATH"] = os.pathsep.join([build, str(ROOT / "python"), env.get("PYTHONPATH", "")])
    env.pop("EOQ_API_KEY", None)
    return env


class ServerProc:
    """`python -m eoq.server -m MODEL --port 0 ARGS`; .url once it listens."""

    def __init__(self, model, *args, timeout=90.0):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="eoq-server-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "eoq.server", "-m", str(model), "--host", "127.0.0.1",
               "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=_server_env(), cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.output())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"eoq-server exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("eoq-server did not start in time:\n" + self.output())

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def stop(self, timeout=20.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture(scope="module")
def srv(smollm2_path):
    s = ServerProc(smollm2_path, "-c", N_CTX, "--parallel", 4, "-t", 1, "--queue", 8,
                   "--api-key", KEY, "--max-body", MAX_BODY, "--alias", "smol", "--cors", UI_ORIGIN)
    yield s
    rc = s.stop()
    out = s.output()
    s.close()
    assert rc == 0, out
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def small(smollm2_path):
    s = ServerProc(smollm2_path, "-c", N_CTX, "--parallel", 1, "-t", 1, "--queue", 1)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(smollm2_path):
    """The library itself, as the expected outputs."""
    with Engine(smollm2_path, n_ctx=N_CTX, n_threads=1) as e:
        yield e


def _h(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def _metric(text, name, labels=""):
    m = re.search(rf"^eoq_{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"eoq_{name}{labels} missing from /metrics"
    return float(m.group(1))


# --- the API surface ------------------------------------------------------------------------

def test_models_and_health(srv, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smol"]
    assert client.models.retrieve("smol").id == "smol"
    r = httpx.get(srv.url + "/health")  # no key needed for /health
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_cors_for_the_allowed_origin_only(srv):
    pre = lambda origin: httpx.options(srv.url + "/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    r = pre(UI_ORIGIN)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in pre("http://elsewhere.test").headers
    r = httpx.get(srv.url + "/v1/models", headers={**_h(), "Origin": UI_ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == UI_ORIGIN


def test_chat_equals_library(client, ref):
    want = ref.chat(QUESTION, max_tokens=12, temperature=0)
    r = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.usage["prompt_tokens"]
    assert r.usage.completion_tokens == want.usage["completion_tokens"]
    assert r.usage.total_tokens == want.usage["total_tokens"]


def test_chat_stream_with_usage(client, ref):
    want = ref.chat(QUESTION, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.usage["completion_tokens"]
    assert chunks[-1].usage.prompt_tokens == want.usage["prompt_tokens"]


def test_stop_and_max_tokens(client, ref):
    full = ref.chat(QUESTION, max_tokens=12, temperature=0).text
    word = full.split()[2]  # a word in the middle of the greedy answer
    r = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=12, temperature=0, stop=[word])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(word)]
    r = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    s = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=12, temperature=0, stop=word,
                                       stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == full[:full.index(word)]


def test_seeded_sampling_is_reproducible(client, ref):
    kw = dict(max_tokens=10, temperature=1.2, top_p=0.9, seed=77)
    want = ref.chat(QUESTION, top_k=0, min_p=0.0, **kw)
    r = [client.chat.completions.create(model="smol", messages=QUESTION, extra_body={"top_k": 0, "min_p": 0.0},
                                        **kw).choices[0].message.content for _ in range(2)]
    assert r == [want.text, want.text]


def test_chat_logprobs(client, ref):
    want = ref.chat(QUESTION, max_tokens=6, temperature=0, logprobs=3)
    r = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == len(want.tokens) == 6
    for got, exp in zip(content, want.logprobs):
        assert got.token == exp.token and bytes(got.bytes) == exp.bytes
        assert got.logprob == pytest.approx(exp.logprob, abs=1e-9)
        assert [t.token for t in got.top_logprobs] == [t.token for t in exp.top_logprobs]
        assert [t.logprob for t in got.top_logprobs] == pytest.approx([t.logprob for t in exp.top_logprobs], abs=1e-9)
        assert got.top_logprobs[0].logprob == pytest.approx(got.logprob)  # greedy: the top one
    # Streamed: the same entries, spread over the chunks.
    s = client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for c in s if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-9)


def test_completions_endpoint(client, ref):
    prompt = "The capital of France is"
    want = ref.generate(prompt, max_tokens=8, temperature=0, logprobs=2)
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    c = r.choices[0]
    assert c.text == want.text and r.usage.completion_tokens == len(want.tokens)
    assert c.logprobs.tokens == [lp.token for lp in want.logprobs]
    assert c.logprobs.token_logprobs == pytest.approx([lp.logprob for lp in want.logprobs], abs=1e-9)
    assert all(len(t) == 2 for t in c.logprobs.top_logprobs)
    assert c.logprobs.text_offset[0] == 0
    s = client.completions.create(model="smol", prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in s if ch.choices) == want.text
    r = client.completions.create(model="smol", prompt=prompt, max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text == prompt + ref.generate(prompt, max_tokens=4, temperature=0).text


def test_llama_cpp_routes(srv, ref):
    prompt = "The capital of France is"
    want = ref.generate(prompt, max_tokens=6, temperature=0)
    r = httpx.post(srv.url + "/completion", headers=_h(),
                   json={"prompt": prompt, "n_predict": 6, "temperature": 0, "n_probs": 2})
    j = r.json()
    assert r.status_code == 200 and j["content"] == want.text and j["stop"] is True
    assert j["tokens_predicted"] == 6 and j["stop_type"] == "limit"
    assert [p["id"] for p in j["completion_probabilities"]] == want.tokens
    with httpx.stream("POST", srv.url + "/completion", headers=_h(),
                      json={"prompt": prompt, "n_predict": 6, "temperature": 0, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == want.text and events[-1]["stop"] is True
    text = "Hello world <|im_end|>"
    ids = httpx.post(srv.url + "/tokenize", headers=_h(), json={"content": text}).json()["tokens"]
    assert ids == ref.tokenize(text, add_special=False, parse_special=True)
    pieces = httpx.post(srv.url + "/tokenize", headers=_h(), json={"content": text, "with_pieces": True}).json()
    assert [p["id"] for p in pieces["tokens"]] == ids and pieces["tokens"][-1]["piece"] == "<|im_end|>"
    back = httpx.post(srv.url + "/detokenize", headers=_h(), json={"tokens": ids}).json()["content"]
    assert back == ref.detokenize(ids, special=True) == text


def test_json_schema(client):
    # Bounded fields, so that greedy decoding ends within max_tokens.
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "population", "capital"],
              "properties": {"city": {"type": "string", "maxLength": 20},
                             "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
                             "capital": {"type": "boolean"}}}
    msgs = [{"role": "user", "content": "Give the capital of France and its population as JSON."}]
    r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=40, temperature=0,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "city", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"city", "population", "capital"}
    assert isinstance(obj["city"], str) and len(obj["city"]) <= 20
    assert type(obj["population"]) is int and 0 <= obj["population"] <= 99999999
    assert type(obj["capital"]) is bool
    r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=40, temperature=0.9, seed=5,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of a JSON object
        assert r.choices[0].message.content.lstrip().startswith("{")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smol", messages=msgs, max_tokens=4,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})


def test_prefix_reuse_picks_the_slot_with_the_history(srv, client):
    first = [{"role": "user", "content": "Name a color."}]
    r1 = client.chat.completions.create(model="smol", messages=first, max_tokens=8, temperature=0)
    # Other requests in between land on other slots or not: the history must still be found.
    client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                   temperature=0)
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "Another one?"}]
    r2 = httpx.post(srv.url + "/v1/chat/completions", headers=_h(),
                    json={"messages": second, "max_tokens": 4, "temperature": 0}).json()
    assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] >= r1.usage.prompt_tokens


# --- errors ---------------------------------------------------------------------------------

def _err(r, status, code=None, param=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["message"] and "type" in e
    if code is not None:
        assert e["code"] == code
    if param is not None:
        assert e["param"] == param
    return e


def test_errors_in_openai_shape(srv, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-unknown", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=2, temperature=-1)
    assert ei.value.body["param"] == "temperature"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    u = srv.url
    _err(httpx.get(u + "/v1/models"), 401, "invalid_api_key")  # no key at all
    _err(httpx.get(u + "/v1/nothing-here", headers=_h()), 404, "not_found")
    _err(httpx.get(u + "/v1/chat/completions", headers=_h()), 405)
    post = lambda path, **kw: httpx.post(u + path, headers={**_h(), **kw.pop("headers", {})}, **kw)
    _err(post("/v1/chat/completions", content=b"{not json"), 400)
    _err(post("/v1/chat/completions", content=b"[1, 2]"), 400)
    _err(post("/v1/chat/completions", content=b""), 400)
    _err(post("/v1/chat/completions", content=b"\xff\xfe\x00garbage"), 400)
    _err(post("/v1/chat/completions", json={"messages": "hi"}), 400, param="messages")
    _err(post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]}), 400, param="messages")
    _err(post("/v1/chat/completions", json={"messages": QUESTION, "top_p": 2}), 400, param="top_p")
    _err(post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": "many"}), 400, param="max_tokens")
    _err(post("/v1/chat/completions", json={"messages": QUESTION, "n": 2}), 400, param="n")
    _err(post("/v1/chat/completions", json={"messages": QUESTION, "logprobs": True, "top_logprobs": 99}), 400,
         param="top_logprobs")
    _err(post("/v1/completions", json={"prompt": [10**9]}), 400, param="prompt")
    _err(post("/detokenize", json={"tokens": [-1]}), 400, param="tokens")
    long_prompt = "word " * (N_CTX + 10)
    _err(post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 2}), 400, "context_length_exceeded")
    # Oversized: the declared length, and a body streamed without one.
    _err(post("/v1/chat/completions", content=b"x" * (MAX_BODY + 1)), 413, "request_too_large")
    chunks = (b"y" * 8192 for _ in range(MAX_BODY // 8192 + 2))
    _err(post("/v1/chat/completions", content=chunks), 413, "request_too_large")
    # And the server is still there.
    assert httpx.get(u + "/health").json()["status"] == "ok"


def test_metrics(srv, client):
    client.chat.completions.create(model="smol", messages=QUESTION, max_tokens=3, temperature=0)
    text = httpx.get(srv.url + "/metrics", headers=_h()).text
    assert _metric(text, "slots") == 4 and _metric(text, "queue_capacity") == 8
    assert _metric(text, "queue_depth") == 0
    assert _metric(text, "generated_tokens_total") >= 3
    for i in range(4):
        assert _metric(text, "kv_bits_per_entry", f'{{slot="{i}"}}') == 16.0  # f16 cache
    busy = [i for i in range(4) if _metric(text, "slot_requests_total", f'{{slot="{i}"}}') > 0]
    used = [i for i in busy if _metric(text, "kv_bytes", f'{{slot="{i}",mode="f16"}}') > 0]
    assert used and used == busy  # every slot that ran holds its cache
    assert re.search(r'^eoq_requests_total\{route="/v1/chat/completions",status="200"\} \d+', text, re.M)


# --- concurrency ----------------------------------------------------------------------------

def test_eight_streams_on_four_slots_equal_sequential(srv, client):
    prompts = [[{"role": "user", "content": f"Count from {i} to {i + 5}."}] for i in range(8)]
    kw = dict(model="smol", max_tokens=10, temperature=0)
    sequential = [client.chat.completions.create(messages=p, **kw).choices[0].message.content for p in prompts]
    results, spans, errors = [None] * 8, [None] * 8, []

    def run(i):
        try:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
            parts, t0 = [], None
            for ch in c.chat.completions.create(messages=prompts[i], stream=True, **kw):
                if ch.choices and ch.choices[0].delta.content:
                    t0 = t0 or time.monotonic()
                    parts.append(ch.choices[0].delta.content)
            results[i] = "".join(parts)
            spans[i] = (t0, time.monotonic())
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == sequential
    # They did run at the same time: some two generations overlapped.
    overlaps = sum(1 for a in spans for b in spans if a is not b and a[0] < b[1] and b[0] < a[1])
    assert overlaps > 0


# --- the small server: queue, disconnect, SIGTERM -------------------------------------------

def _long_stream(url, max_tokens=2000):
    """An open streaming request that generates until the context is full (many seconds)."""
    cm = httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, "stream": True})
    resp = cm.__enter__()
    lines = resp.iter_lines()
    for line in lines:  # wait for the first token: the generation has started
        if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
            break
    return cm, lines


def _wait(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_queue_full_is_503_and_disconnect_frees_the_slot(small):
    u = small.url
    cm, _ = _long_stream(u)
    # The event loop answers while the slot generates (compute runs in the slot's thread).
    t0 = time.monotonic()
    assert httpx.get(u + "/health").json()["slots_processing"] == 1
    assert time.monotonic() - t0 < 2.0
    # A second request waits in the queue (bound 1) ...
    queued = {}

    def second():
        queued["r"] = httpx.post(u + "/v1/completions", timeout=60,
                                 json={"prompt": "Hello", "max_tokens": 2, "temperature": 0})

    t = threading.Thread(target=second)
    t.start()
    assert _wait(lambda: httpx.get(u + "/health").json()["queue"] == 1)
    # ... a third is refused.
    _err(httpx.post(u + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}), 503, "server_overloaded")
    with pytest.raises(openai.InternalServerError) as ei:
        openai.OpenAI(base_url=u + "/v1", api_key="x", max_retries=0).completions.create(
            model="", prompt="Hi", max_tokens=2)
    assert ei.value.status_code == 503
    # The first client goes away: its generation stops and the queued request gets the slot.
    m = lambda: _metric(httpx.get(u + "/metrics").text, "generated_tokens_total")
    at_exit = m()
    cm.__exit__(None, None, None)
    t.join(30)
    assert queued["r"].status_code == 200 and queued["r"].json()["usage"]["completion_tokens"] == 2
    # Left alone it would run to the full context (~500 tokens); cancelled, it adds a few.
    assert m() - at_exit < 100
    before = m()
    time.sleep(0.5)
    assert m() == before  # nothing is generating for the departed client
    h = httpx.get(u + "/health").json()
    assert h["slots_processing"] == 0 and h["queue"] == 0


def test_disconnect_while_queued_and_non_stream(small):
    u = small.url
    cm, _ = _long_stream(u)
    # A non-streaming client that gives up while waiting in the queue leaves it.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(u + "/v1/completions", timeout=1.0, json={"prompt": "Hello", "max_tokens": 400})
    assert _wait(lambda: httpx.get(u + "/health").json()["queue"] == 0)
    cm.__exit__(None, None, None)
    assert _wait(lambda: httpx.get(u + "/health").json()["slots_processing"] == 0)
    # A non-streaming client that gives up while generating frees the slot too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(u + "/v1/completions", timeout=1.0, json={"prompt": "Once", "max_tokens": 2000, "temperature": 0})
    assert _wait(lambda: httpx.get(u + "/health").json()["slots_processing"] == 0, timeout=5)
    r = httpx.post(u + "/v1/completions", timeout=30, json={"prompt": "Hello", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200


def test_back_to_back_requests_find_the_slot_free(small):
    """Two clients on one slot with a queue of one: each sends its next request as soon as its
    answer ends, so there is never more than one waiting and none may be refused."""
    statuses, lock = [], threading.Lock()

    def client(k):
        with httpx.Client(base_url=small.url, timeout=60) as c:
            for i in range(6):
                r = c.post("/v1/completions", json={"prompt": f"Item {k}-{i}:", "max_tokens": 1, "temperature": 0})
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200] * 12, statuses


def test_load_tool(small, tmp_path):
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "load_server.py"), "--url", small.url, "-N", "1,2",
                        "--requests", "3", "--max-tokens", "4", "--json", str(out)],
                       capture_output=True, text=True, env=_server_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    levels = json.loads(out.read_text())["levels"]
    assert [lv["clients"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["requests"] == 3 and lv["failed"] == 0 and 3 <= lv["tokens"] <= 12
        assert lv["tokens_per_s"] > 0 and 0 < lv["ttft_p50_ms"] <= lv["ttft_p99_ms"]
    assert "| clients |" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "load_server.py"), "--url", "http://10.1.2.3:8080"],
                       capture_output=True, text=True, env=_server_env(), timeout=60)
    assert r.returncode != 0 and "loopback" in r.stderr  # never aimed anywhere but this machine


def test_sigterm_mid_stream_exits_cleanly(small):
    cm, lines = _long_stream(small.url)
    t0 = time.monotonic()
    small.proc.send_signal(signal.SIGTERM)
    rest = [line for line in lines if line]  # it ends (it does not run until the context is full)
    cm.__exit__(None, None, None)
    assert small.proc.wait(20) == 0
    assert time.monotonic() - t0 < 15
    assert rest and rest[-1] == "data: [DONE]"
    assert any("shutting down" in line for line in rest)
    assert "Traceback" not in small.output(), small.output()


def test_command_line_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "eoq.server", *a], capture_output=True, text=True,
                                    env=_server_env(), cwd=str(ROOT), timeout=60)
    r = run("--help")
    assert r.returncode == 0 and "--parallel" in r.stdout and "--api-key" in r.stdout
    r = run("--parallel", "0")
    assert r.returncode == 2 and "--parallel must be >= 1" in r.stderr
    r = run("-m", str(tmp_path / "missing.gguf"))
    assert r.returncode == 1 and "cannot load the model" in r.stderr and "Traceback" not in r.stderr
    r = run("--kv", "bogus")
    assert r.returncode == 2 and "bogus" in r.stderr
