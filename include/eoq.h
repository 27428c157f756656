/* eoq C API: load a GGUF model, tokenize, generate with a per-token callback.
 *
 * Every call returns an eoq_status; on failure eoq_last_error() gives a one-line message
 * (thread-local, valid until the next eoq call on the same thread). Handles are opaque.
 * A model handle must not be used from two threads at once.
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
  EOQ_ERR_BUFFER = 8        /* output buffer too small; the needed size was returned */
} eoq_status;

typedef struct eoq_model eoq_model;

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

#ifdef __cplusplus
}
#endif

#endif /* EOQ_H */
