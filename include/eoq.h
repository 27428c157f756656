/* eoq C API: load a GGUF model, tokenize, generate with a per-token callback; contexts of
 * several sequences decoded together.
 *
 * Every call returns an eoq_status; on failure eoq_last_error() gives a one-line message
 * (thread-local, valid until the next eoq call on the same thread). Handles are opaque.
 * eoq_generate on a model handle must not run on two threads at once (it uses the model's own
 * context). Sequences of one context may be used from different threads: their evaluations
 * are batched into shared forward steps; two threads on one sequence take turns.
 */
#ifndef EOQ_H
#define EOQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define EOQ_API __attribute__((visibility("default")))
#else
#define EOQ_API
#endif

typedef enum {
  EOQ_OK = 0,
  EOQ_ERR_IO = 1,           /* file missing or unreadable */
  EOQ_ERR_FORMAT = 2,       /* malformed GGUF */
  EOQ_ERR_UNSUPPORTED = 3,  /* unsupported tensor type, architecture, tokenizer */
  EOQ_ERR_INVALID_ARG = 4,  /* bad parameter, NULL pointer */
  EOQ_ERR_CONTEXT_FULL = 5, /* prompt longer than the context */
  EOQ_ERR_INVALID_UTF8 = 6, /* text is not valid UTF-8 */
  EOQ_ERR_INTERNAL = 7,
  EOQ_ERR_BUFFER = 8,       /* output buffer too small; the needed size was returned */
  EOQ_ERR_ABORTED = 9       /* the abort callback stopped an evaluation */
} eoq_status;

typedef struct eoq_model eoq_model;
typedef struct eoq_context eoq_context; /* n_seq sequences over one loaded model */
typedef struct eoq_seq eoq_seq;         /* one sequence of a context (owned by it) */

typedef struct {
  int32_t n_ctx;     /* 0: the model's training context */
  int32_t n_threads; /* 0: all hardware threads */
  int32_t n_batch;   /* prompt tokens per forward call (512) */
  const char* kv;    /* KV cache mode with optional knobs, e.g. "f16" or "eoq2:ring=0:k_bits=3"
                        (NULL: "f16"; knobs as Engine(kv_options=...) in Python) */
  const char* device; /* "cpu", "cuda" or "cuda:N" (NULL: "cpu"); where CUDA cannot run,
                         eoq_model_load fails with EOQ_ERR_UNSUPPORTED and the reason */
} eoq_params;

typedef struct {
  float temperature;   /* 0: greedy */
  int32_t top_k;       /* 0: off */
  float top_p;         /* 1: off */
  float min_p;         /* 0: off */
  float repeat_penalty;/* 1: off */
  int32_t repeat_last_n;
  int64_t seed;        /* < 0: random */
} eoq_sampling;

/* Called once per generated token with the text it completes: whole UTF-8 characters only
 * (possibly empty while a multi-byte character is pending). Return non-zero to continue.
 * If bytes of an incomplete character remain at the end, one last call passes token -1 and
 * them replaced by U+FFFD. */
typedef int (*eoq_token_callback)(void* user_data, int32_t token, const char* text, size_t len);

/* Called after each full prompt chunk (n_batch tokens) of an evaluation: tokens done and asked
 * for. Return non-zero to stop there: the call returns EOQ_ERR_ABORTED and the sequence holds
 * the chunks done (usable: evaluate the rest later). */
typedef int (*eoq_abort_callback)(void* user_data, int32_t done, int32_t total);

EOQ_API const char* eoq_version(void);
EOQ_API const char* eoq_last_error(void);
EOQ_API eoq_params eoq_default_params(void);
EOQ_API eoq_sampling eoq_default_sampling(void);

EOQ_API eoq_status eoq_model_load(const char* path, const eoq_params* params, eoq_model** out);
EOQ_API void eoq_model_free(eoq_model* model);

/* Tokenizes UTF-8 text into tokens[0..capacity). *n_tokens receives the count; if it exceeds
 * capacity the call returns EOQ_ERR_BUFFER and writes nothing. */
EOQ_API eoq_status eoq_tokenize(eoq_model* model, const char* text, int add_special, int parse_special,
                                int32_t* tokens, int32_t capacity, int32_t* n_tokens);

/* Tokenizes the prompt (with BOS as the model asks, special tokens parsed), evaluates it from an
 * empty cache and samples up to max_tokens (< 0: until end of generation or context full).
 * n_generated (may be NULL) receives the number of tokens produced. */
EOQ_API eoq_status eoq_generate(eoq_model* model, const char* prompt, int32_t max_tokens,
                                const eoq_sampling* sampling, eoq_token_callback callback, void* user_data,
                                int32_t* n_generated);

/* ---- contexts and sequences ---------------------------------------------------------- */

/* A context of n_seq sequences on a loaded model, each with its own KV cache of params->kv for
 * params->n_ctx tokens (n_threads and device are the model's; NULL: the model's own n_ctx, n_batch
 * and kv). Several contexts may share a model (their steps take turns). Free it before the model. */
EOQ_API eoq_status eoq_context_new(eoq_model* model, int32_t n_seq, const eoq_params* params, eoq_context** out);
EOQ_API void eoq_context_free(eoq_context* ctx);
/* Sequence i (0 <= i < n_seq) of ctx; the handle lives as long as the context. */
EOQ_API eoq_status eoq_context_seq(eoq_context* ctx, int32_t i, eoq_seq** out);

/* Evaluates n tokens at the sequence's position (prompt chunks of n_batch; abort may be NULL).
 * EOQ_ERR_CONTEXT_FULL before computing anything when they do not fit. */
EOQ_API eoq_status eoq_seq_eval(eoq_seq* seq, const int32_t* tokens, int32_t n, eoq_abort_callback abort,
                                void* user_data);
/* One forward step: tokens[k] on seqs[k] for k < n, all together (distinct sequences of one
 * context): how a single thread decodes the next token of several sequences at once. */
EOQ_API eoq_status eoq_context_decode(eoq_context* ctx, int32_t n, eoq_seq* const* seqs, const int32_t* tokens);
/* The logits of the sequence's last evaluated token, [n_vocab] floats, valid until its next
 * evaluation or reset. */
EOQ_API eoq_status eoq_seq_logits(eoq_seq* seq, const float** logits, int32_t* n_vocab);
EOQ_API eoq_status eoq_seq_n_past(eoq_seq* seq, int32_t* n_past);
EOQ_API eoq_status eoq_seq_reset(eoq_seq* seq);
/* Keeps the first n tokens; *n_kept (may be NULL) receives those kept (a compressed cache keeps
 * its last block boundary at or before n). */
EOQ_API eoq_status eoq_seq_truncate(eoq_seq* seq, int32_t n, int32_t* n_kept);
/* State files: the sequence's tokens, last logits and cache saved to path (*n_bytes may be NULL),
 * and loaded back into a sequence of a context with the same model and cache configuration.
 * A bad file (another model or cache, corrupt, truncated) is EOQ_ERR_FORMAT and leaves the
 * sequence empty; a cache mode without a serializer is EOQ_ERR_UNSUPPORTED. */
EOQ_API eoq_status eoq_seq_save_state(eoq_seq* seq, const char* path, size_t* n_bytes);
EOQ_API eoq_status eoq_seq_load_state(eoq_seq* seq, const char* path);
/* eoq_generate on this sequence, reusing the longest common prefix with what it holds. */
EOQ_API eoq_status eoq_seq_generate(eoq_seq* seq, const char* prompt, int32_t max_tokens,
                                    const eoq_sampling* sampling, eoq_token_callback callback, void* user_data,
                                    int32_t* n_generated);

#ifdef __cplusplus
}
#endif

#endif /* EOQ_H */
