# Type stubs for eoq._core, the pybind11 module (bindings/*.cpp). The Pythonic API is eoq.Engine.
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

class EoqError(ValueError):
    """An error from the C++ core. code: "io", "format", "unsupported", "invalid_arg",
    "context_full", "invalid_utf8" or "internal"."""

    code: str

def parse_kv_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """"eoq2:ring=0:k_bits=3" -> ("eoq2", every knob as Engine(kv_options=...) takes them)."""

class _SequenceOps:
    """What acts on one sequence (the Engine: sequence 0; a Sequence: its own)."""

    @property
    def n_past(self) -> int: ...
    @property
    def seq_index(self) -> int: ...
    def eval(self, tokens: List[int], all_logits: bool = False,
             progress: Optional[Callable[[int, int], Optional[bool]]] = None) -> bool:
        """Evaluate tokens at position n_past in chunks of n_batch, batched with other threads'
        sequences (EoqError "context_full" if they do not fit). After each full chunk: pending
        signals are handled (Ctrl-C raises KeyboardInterrupt there) and progress(done, total) is
        called; False from it stops. Returns False when stopped; the chunks done are kept."""
    def logits(self) -> npt.NDArray[np.float32]:
        """[n_vocab] logits of the last evaluated position (a copy)."""
    def all_logits(self) -> npt.NDArray[np.float32]:
        """[n, n_vocab] logits of every token of the last eval(all_logits=True)."""
    def reset(self) -> None: ...
    def truncate(self, n: int) -> int:
        """Keep the first n tokens; returns those kept (a compressed cache: fewer, its last kept
        block boundary, equal to a fresh run there)."""
    def reuse_prefix(self, tokens: List[int]) -> int:
        """Keep the longest common prefix with tokens (never all of them); returns its length."""
    def cached_tokens(self) -> List[int]: ...
    def set_active(self, active: bool) -> None:
        """Inside a generation loop: batched steps wait briefly for this sequence's next token."""
    def save_state(self, path: str) -> int: ...
    def load_state(self, path: str) -> None: ...
    def kv_info(self) -> dict:
        """mode (str), n_tokens (int), bytes (int), bits_per_entry (float)."""
    def compression_stats_json(self) -> str:
        """The cache's statistics as JSON (kv-compression spec section 8)."""

class Sequence(_SequenceOps):
    """Sequence i of an Engine's context (Engine.sequence(i)); the model facts below too."""

class Engine(_SequenceOps):
    """One loaded GGUF model, its tokenizer and a context of n_seq sequences, each with its own
    KV cache; the Engine's own eval/logits/reset/... act on sequence 0. Compute releases the GIL."""

    def __init__(self, path: str, n_ctx: int = 0, n_threads: int = 0, kv: str = "f16",
                 n_batch: int = 512, kv_options: Dict[str, Any] = ..., device: str = "cpu",
                 n_seq: int = 1) -> None: ...
    @property
    def n_seq(self) -> int: ...
    def sequence(self, i: int) -> Sequence: ...
    def eval_batch(self, seqs: List[int], tokens: List[List[int]]) -> None:
        """One forward step: tokens[k] (1..n_batch of them) on sequence seqs[k], all together."""
    def step_stats(self) -> Dict[str, int]:
        """steps, tokens, segments (sequence parts of steps), max_segments: what the scheduler ran."""
    @property
    def device(self) -> str:
        """'cpu' or 'cuda:N'."""
    @property
    def backend(self) -> str:
        """Where it runs, e.g. 'cpu (avx512vnni, 2 threads)' or 'cuda:0 (NVIDIA H200, ...)'."""
    @property
    def weight_bytes_per_token(self) -> int:
        """Weight bytes one decode step reads (every matrix once, one embedding row)."""
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_ctx_train(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def load_ms(self) -> float: ...
    @property
    def bos(self) -> int: ...
    @property
    def eos(self) -> int: ...
    @property
    def add_bos(self) -> bool: ...
    @property
    def chat_template(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def name(self) -> str: ...
    def metadata(self, key: str) -> Optional[Any]: ...
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]: ...
    def token_to_piece(self, id: int, special: bool = False) -> bytes: ...
    def detokenize(self, ids: List[int], special: bool = False) -> bytes: ...
    def token_text(self, id: int) -> bytes: ...
    def is_eog(self, id: int) -> bool: ...
    def capture_qkv(self, tokens: List[int], kv: str = "f16", kv_options: Dict[str, Any] = ...) -> Dict[str, npt.NDArray[np.float32]]:
        """Post-RoPE q [n_layer, n, n_head, head_dim], k and v [n_layer, n, n_head_kv, head_dim] of
        tokens run from position 0 with a temporary cache; the engine's own state is untouched."""

class Sampler:
    """Repeat penalty, top-k, top-p, min-p, temperature (0 = greedy), then a seeded draw."""

    def __init__(self, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: int = -1) -> None: ...
    @property
    def seed(self) -> int: ...
    def sample(self, logits: npt.ArrayLike) -> int: ...
    def accept(self, token: int) -> None: ...
    def reset(self) -> None: ...

class Utf8Stream:
    """Incremental UTF-8: push() returns only complete characters, flush() the rest."""

    def __init__(self) -> None: ...
    def push(self, data: bytes) -> str: ...
    def flush(self) -> str: ...

# GGUF reader, tokenizer and kernel test hooks are bound too (bindings/bind_gguf.cpp,
# bind_tokenizer.cpp, bind_kernels.cpp); they are internal and not typed here.
class _Cuda:
    """eoq._core.cuda: whether the CUDA backend can run, the roofline's bandwidth, and the CUDA
    kernels' test hooks (bindings/bind_cuda_*.cpp; present in CUDA builds only)."""

    def built(self) -> bool: ...
    def unavailable_reason(self, index: int = 0) -> str:
        """'' when cuda:index can run here, else the one-line reason."""
    def copy_bandwidth(self, index: int = 0) -> float:
        """Bytes read + written per second by a 1 GiB device-to-device copy (CUDA builds)."""
    def __getattr__(self, name: str) -> Any: ...


cuda: _Cuda

def __getattr__(name: str) -> Any: ...
