"""The C API's contexts and sequences: a C program decodes 4 sequences together with
eoq_context_decode (one step per token for all four) and compares them with eoq_seq_generate on
each prompt alone; the abort callback stops a prompt at a chunk boundary with EOQ_ERR_ABORTED."""
import shutil
import subprocess

import pytest

from eoq import capi

C_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include "eoq.h"

#define N_GEN 10
static const char* PROMPTS[4] = {"The capital of France is", "Once upon a time", "def fib(n):", "1, 2, 3,"};

static int argmax(const float* x, int n) {
  int b = 0;
  for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
  return b;
}

static int collect(void* user, int32_t token, const char* text, size_t len) {
  int32_t* out = (int32_t*)user;
  (void)text; (void)len;
  if (token >= 0) out[1 + out[0]++] = token;
  return 1;
}

static int stop_at_two(void* user, int32_t done, int32_t total) {
  (void)total;
  (*(int*)user)++;
  return done >= 32; /* chunks of 16: stop after the second */
}

int main(int argc, char** argv) {
  (void)argc;
  eoq_params p = eoq_default_params();
  p.n_ctx = 256;
  p.kv = argv[2];
  eoq_model* m = NULL;
  if (eoq_model_load(argv[1], &p, &m) != EOQ_OK) { fprintf(stderr, "load: %s\n", eoq_last_error()); return 10; }
  eoq_context* ctx = NULL;
  if (eoq_context_new(m, 4, NULL, &ctx) != EOQ_OK) { fprintf(stderr, "ctx: %s\n", eoq_last_error()); return 11; }
  eoq_seq* seqs[4];
  for (int i = 0; i < 4; i++) if (eoq_context_seq(ctx, i, &seqs[i]) != EOQ_OK) return 12;
  eoq_seq* bad = NULL;
  if (eoq_context_seq(ctx, 4, &bad) != EOQ_ERR_INVALID_ARG || bad) return 13;
  fprintf(stderr, "bad seq: %s\n", eoq_last_error());

  /* reference: each prompt alone, greedy */
  eoq_sampling sp = eoq_default_sampling();
  sp.temperature = 0;
  int32_t ref[4][N_GEN + 1];
  for (int i = 0; i < 4; i++) {
    ref[i][0] = 0;
    if (eoq_seq_generate(seqs[0], PROMPTS[i], N_GEN, &sp, collect, ref[i], NULL) != EOQ_OK) return 14;
    eoq_seq_reset(seqs[0]);
  }
  /* batched: prompts evaluated, then one eoq_context_decode per token for all four */
  int32_t cur[4], got[4][N_GEN];
  for (int i = 0; i < 4; i++) {
    int32_t ids[64], n = 0;
    if (eoq_tokenize(m, PROMPTS[i], 1, 1, ids, 64, &n) != EOQ_OK) return 15;
    if (eoq_seq_eval(seqs[i], ids, n, NULL, NULL) != EOQ_OK) return 16;
  }
  for (int k = 0; k < N_GEN; k++) {
    for (int i = 0; i < 4; i++) {
      const float* lg; int32_t nv;
      if (eoq_seq_logits(seqs[i], &lg, &nv) != EOQ_OK) return 17;
      cur[i] = argmax(lg, nv);
      got[i][k] = cur[i];
    }
    if (k + 1 < N_GEN && eoq_context_decode(ctx, 4, seqs, cur) != EOQ_OK) { fprintf(stderr, "decode: %s\n", eoq_last_error()); return 18; }
  }
  int same = 1;
  for (int i = 0; i < 4; i++) {
    if (ref[i][0] != N_GEN) same = 0;
    for (int k = 0; k < N_GEN && k < ref[i][0]; k++) if (ref[i][1 + k] != got[i][k]) same = 0;
  }
  fprintf(stderr, "batched equal sequential: %d\n", same);
  eoq_seq* twice[2] = {seqs[1], seqs[1]};
  if (eoq_context_decode(ctx, 2, twice, cur) != EOQ_ERR_INVALID_ARG) return 19;
  fprintf(stderr, "twice: %s\n", eoq_last_error());

  /* abort at a chunk boundary; the sequence keeps the chunks done */
  eoq_context* c2 = NULL;
  eoq_params p2 = eoq_default_params();
  p2.n_ctx = 256; p2.n_batch = 16; p2.kv = argv[2];
  if (eoq_context_new(m, 1, &p2, &c2) != EOQ_OK) { fprintf(stderr, "ctx2: %s\n", eoq_last_error()); return 20; }
  eoq_seq* s2; eoq_context_seq(c2, 0, &s2);
  int32_t ids[100];
  for (int i = 0; i < 100; i++) ids[i] = 100 + i;
  int calls = 0;
  eoq_status st = eoq_seq_eval(s2, ids, 100, stop_at_two, &calls);
  char msg[256];
  snprintf(msg, sizeof msg, "%s", eoq_last_error()); /* the next call clears it */
  int32_t n_past = -1;
  eoq_seq_n_past(s2, &n_past);
  fprintf(stderr, "abort: %d calls %d n_past %d (%s)\n", (int)st, calls, (int)n_past, msg);
  if (eoq_seq_eval(s2, ids + n_past, 100 - n_past, NULL, NULL) != EOQ_OK) return 21;
  eoq_seq_n_past(s2, &n_past);
  fprintf(stderr, "resumed n_past %d\n", (int)n_past);
  int32_t kept = -1;
  if (eoq_seq_truncate(s2, 50, &kept) != EOQ_OK) return 22;
  fprintf(stderr, "kept %d\n", (int)kept);
  if (eoq_seq_eval(s2, ids, 1000, NULL, NULL) != EOQ_ERR_INVALID_ARG) return 23;
  /* state files: saved, loaded into another sequence, the same logits; garbage is a format error */
  size_t nb = 0;
  eoq_status ss = eoq_seq_save_state(s2, argv[3], &nb);
  if (ss == EOQ_OK) {
    /* into a sequence of another context (same model and cache configuration): same logits */
    eoq_seq* s3; eoq_context_seq(ctx, 3, &s3);
    if (eoq_seq_load_state(s3, argv[3]) != EOQ_OK) { fprintf(stderr, "load s3: %s\n", eoq_last_error()); return 24; }
    const float *l2, *l3; int32_t nv2, nv3, n3 = -1;
    eoq_seq_logits(s2, &l2, &nv2);
    eoq_seq_logits(s3, &l3, &nv3);
    eoq_seq_n_past(s3, &n3);
    fprintf(stderr, "other context: n_past %d, same logits %d\n", (int)n3, nv2 == nv3 && memcmp(l2, l3, sizeof(float) * nv2) == 0);
    eoq_seq_reset(s2);
    if (eoq_seq_load_state(s2, argv[3]) != EOQ_OK) { fprintf(stderr, "load: %s\n", eoq_last_error()); return 25; }
    eoq_seq_n_past(s2, &n_past);
    fprintf(stderr, "state %d bytes, loaded n_past %d\n", (int)nb, (int)n_past);
    FILE* g = fopen(argv[3], "r+b");
    fseek(g, 40, SEEK_SET); fputc(0x5a, g); fclose(g);
    if (eoq_seq_load_state(s2, argv[3]) != EOQ_ERR_FORMAT) return 26;
    fprintf(stderr, "corrupt: %s\n", eoq_last_error());
    eoq_seq_n_past(s2, &n_past);
    if (n_past != 0) return 27;
  } else {
    fprintf(stderr, "save: %d %s\n", (int)ss, eoq_last_error());
  }
  eoq_context_free(c2);
  eoq_context_free(ctx);
  eoq_model_free(m);
  return 0;
}
"""


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed for the C API test"
    d = tmp_path_factory.mktemp("capi_sessions")
    src = d / "app.c"
    src.write_text(C_PROGRAM)
    lib = capi.library_path()
    exe = d / "app"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", str(src), f"-I{capi.include_dir()}", str(lib),
                    f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True)
    return exe


@pytest.mark.parametrize("kv", ["f16", "eoq"])
def test_c_contexts_and_sequences(c_program, smollm2_path, kv, tmp_path):
    r = subprocess.run([str(c_program), smollm2_path, kv, str(tmp_path / "s.eoqstate")], capture_output=True,
                       timeout=300)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert "bad seq: sequence 4 is out of range" in err
    assert "batched equal sequential: 1" in err
    assert "twice: " in err and "appears twice" in err
    assert "abort: 9 calls 2 n_past 32" in err and "abort callback" in err
    assert "resumed n_past 100" in err
    import re

    m = re.search(r"kept (\d+)", err)
    assert m, err
    kept = int(m.group(1))
    if kv == "f16":
        assert kept == 50
    else:
        assert 0 <= kept <= 50  # a compressed cache keeps its last valid prefix
    # State files, compressed caches included: saved, loaded into another context, same logits.
    assert "state " in err and f"loaded n_past {kept}" in err
    assert f"other context: n_past {kept}, same logits 1" in err
    assert "corrupt: state file: checksum mismatch" in err
