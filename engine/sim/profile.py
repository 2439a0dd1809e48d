"""Latency and capacity profiles: how fast and how big the simulated engine is.

A :class:`LatencyProfile` holds the KV-cache capacity, the batch limit and the coefficients of one
iteration-latency formula::

    iteration_s = overhead_s
                + max(weight_read_s + kv_read_s_per_token · context_tokens,    # bandwidth bound
                      compute_s_per_token · (decode_seqs + prefill_tokens))    # compute bound
                + decode_s_per_seq · decode_seqs                             # serial terms
                + prefill_s_per_token · prefill_tokens

``context_tokens`` is the KV held by the decoding sequences (read once per iteration),
``decode_seqs`` the sequences producing one token, ``prefill_tokens`` the prompt tokens (re)computed
in the iteration. Two ways to fill it:

* :func:`derive_profile` from a model's shape and the GPUs' published peak figures (a roofline with
  stated efficiencies) — the built-in :data:`PROFILES` for the paper's two setups;
* a JSON file (:meth:`LatencyProfile.from_json`) — e.g. a linear fit ``a + b·batch + c·context +
  d·prefill`` measured on a real engine sets ``overhead_s=a, decode_s_per_seq=b,
  kv_read_s_per_token=c, prefill_s_per_token=d`` and leaves the roofline terms at 0.

Attention FLOPs are left out of the compute term on purpose: per decoded token they are
``4·layers·hidden·context`` against ``2·params`` for the matmuls — 1.8% at 1,000 tokens of context
for OPT-66B — and decode attention is bandwidth bound anyway (its KV read is counted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.sim.errors import ProfileError

__all__ = [
    "A100_40GB",
    "A100_80GB",
    "LLAMA_31_70B",
    "OPT_66B",
    "PROFILES",
    "Efficiency",
    "GPUSpec",
    "LatencyProfile",
    "ModelShape",
    "derive_profile",
    "get_profile",
]

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """KV capacity, batch limit and the iteration-latency coefficients (module docstring)."""

    name: str
    kv_capacity_blocks: int  # KV-cache blocks on the GPUs (all tensor-parallel shards together)
    block_size: int = 16  # tokens per KV block (vLLM's default)
    max_batch: int = 256  # most sequences per iteration (vLLM's default max_num_seqs)
    overhead_s: float = 0.0  # fixed cost per iteration (host work, all-reduce latency)
    weight_read_s: float = 0.0  # time to stream the weights from HBM once
    kv_read_s_per_token: float = 0.0  # time to stream one context token's KV from HBM
    compute_s_per_token: float = 0.0  # matmul time per processed token (decode or prefill)
    decode_s_per_seq: float = 0.0  # serial time per decoding sequence (e.g. all-reduce volume)
    prefill_s_per_token: float = 0.0  # serial time per prefilled token
    swap_s_per_block: float = 0.0  # time to move one KV block between GPU and host (each way)
    notes: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        for name in ("kv_capacity_blocks", "block_size", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProfileError(
                    f"profile {self.name!r}: {name} must be an int >= 1, got {value!r}"
                )
        for f in dataclasses.fields(self):
            if f.name.endswith(("_s", "_per_token", "_per_seq", "_per_block")):
                value = getattr(self, f.name)
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not (math.isfinite(value) and value >= 0)
                ):
                    raise ProfileError(
                        f"profile {self.name!r}: {f.name} must be a finite number >= 0,"
                        f" got {value!r}"
                    )

    @property
    def kv_capacity_tokens(self) -> int:
        """KV capacity in tokens."""
        return self.kv_capacity_blocks * self.block_size

    def iteration_s(self, decode_seqs: int, context_tokens: int, prefill_tokens: int = 0) -> float:
        """Seconds one iteration takes (formula in the module docstring)."""
        memory = self.weight_read_s + self.kv_read_s_per_token * context_tokens
        compute = self.compute_s_per_token * (decode_seqs + prefill_tokens)
        return (
            self.overhead_s
            + (memory if memory > compute else compute)
            + self.decode_s_per_seq * decode_seqs
            + self.prefill_s_per_token * prefill_tokens
        )

    def decode_s(self, batch: int, context_tokens: int) -> float:
        """Seconds per token for a pure decode batch of ``batch`` sequences."""
        return self.iteration_s(batch, context_tokens, 0)

    def prefill_s(self, tokens: Any) -> Any:
        """Seconds a stand-alone prefill of ``tokens`` prompt tokens takes (an int, or a numpy
        array elementwise: ``iteration_s(0, 0, tokens)``)."""
        memory = self.weight_read_s
        compute = self.compute_s_per_token * tokens
        bound = compute * (compute > memory) + memory * (compute <= memory)
        return self.overhead_s + bound + self.prefill_s_per_token * tokens

    def swap_s(self, blocks: int) -> float:
        """Seconds to move ``blocks`` KV blocks one way between GPU and host memory."""
        return self.swap_s_per_block * blocks

    def to_json(self) -> str:
        """The profile as a JSON object (every field, so a file documents itself)."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "<profile>") -> LatencyProfile:
        """Parse :meth:`to_json`'s format; errors name ``source`` and the bad field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{source}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProfileError(
                f"{source}: unknown field(s) {', '.join(map(repr, unknown))};"
                f" known: {', '.join(sorted(known))}"
            )
        for required in ("name", "kv_capacity_blocks"):
            if required not in data:
                raise ProfileError(f"{source}: missing field {required!r}")
        try:
            return cls(**data)
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> LatencyProfile:
        """Read a JSON profile file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
        return cls.from_json(text, source=str(path))


# --------------------------------------------------------------------------------------------------
# Deriving a profile from published figures.


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A decoder-only transformer's shape (from its Hugging Face ``config.json``)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int  # MLP intermediate size
    vocab: int
    gated_mlp: bool  # SwiGLU (3 matrices) vs. a plain 2-matrix MLP
    tied_embeddings: bool  # lm_head shares the input embedding
    bytes_per_param: int = 2  # fp16 / bf16

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Parameter count of the matmul weights and embeddings (norms and biases are < 0.1%)."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        attention = d * d + 2 * d * kv + d * d  # q, k, v, o projections
        mlp = (3 if self.gated_mlp else 2) * d * self.ffn
        embeddings = self.vocab * d * (1 if self.tied_embeddings else 2)
        return self.layers * (attention + mlp) + embeddings

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """Published peak figures of one GPU."""

    name: str
    memory_bytes: int  # HBM capacity
    hbm_bytes_s: float  # peak HBM bandwidth
    flops_s: float  # peak dense bf16/fp16 tensor-core throughput
    link_bytes_s: float  # GPU-to-GPU (NVLink) bandwidth per direction
    host_bytes_s: float  # GPU-to-host (PCIe) bandwidth per direction


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Assumptions: the share of each peak a serving engine achieves, and fixed costs.

    These are stated assumptions, not measurements; a calibration against a real engine replaces
    the whole profile with a fitted JSON one.
    """

    hbm: float = 0.8  # achieved / peak HBM bandwidth for weight and KV streaming (GEMV-like)
    flops: float = 0.5  # achieved / peak FLOP/s on batched matmuls (typical serving MFU 40–60%)
    link: float = 0.8  # achieved / peak NVLink bandwidth for ring all-reduce
    host: float = 0.8  # achieved / peak PCIe bandwidth for KV swaps
    host_overhead_s: float = 0.003  # scheduler, sampling and kernel-launch time per iteration
    allreduce_latency_s: float = 10e-6  # latency of one small NCCL all-reduce over NVLink
    gpu_memory_utilization: float = 0.9  # vLLM's default share of HBM it may use
    activation_bytes_per_gpu: int = 3 * GiB  # activations, CUDA graphs, NCCL buffers (non-KV)


def derive_profile(
    model: ModelShape,
    gpu: GPUSpec,
    num_gpus: int,
    eff: Efficiency | None = None,
    block_size: int = 16,
    max_batch: int = 256,
) -> LatencyProfile:
    """A roofline profile for ``model`` tensor-parallel over ``num_gpus`` × ``gpu``.

    Tensor parallelism splits weights, KV heads and FLOPs evenly over the GPUs, which run in
    lockstep, so every per-GPU time is the whole model's divided by ``num_gpus``. Each layer does
    two all-reduces of the hidden state (after attention and after the MLP): a latency per
    all-reduce (in ``overhead_s``) plus a ring volume of ``2·(n-1)/n × hidden × bytes`` per token
    (in the serial per-token terms, since vLLM does not overlap them with compute).
    """
    eff = eff or Efficiency()
    n = num_gpus
    weight_bytes_gpu = model.params * model.bytes_per_param / n
    kv_bytes_token_gpu = model.kv_bytes_per_token / n
    hbm = gpu.hbm_bytes_s * eff.hbm
    kv_budget_gpu = (
        gpu.memory_bytes * eff.gpu_memory_utilization
        - weight_bytes_gpu
        - eff.activation_bytes_per_gpu
    )
    if kv_budget_gpu <= 0:
        raise ProfileError(f"{model.name} does not fit on {n}x {gpu.name}: no memory left for KV")
    kv_blocks = int(kv_budget_gpu // (kv_bytes_token_gpu * block_size))
    allreduces = 2 * model.layers
    ring = 2 * (n - 1) / n if n > 1 else 0.0
    comm_s_per_token = (
        allreduces * model.hidden * model.bytes_per_param * ring / (gpu.link_bytes_s * eff.link)
    )
    return LatencyProfile(
        name=f"{model.name}-{n}x{gpu.name}",
        kv_capacity_blocks=kv_blocks,
        block_size=block_size,
        max_batch=max_batch,
        overhead_s=eff.host_overhead_s + (allreduces * eff.allreduce_latency_s if n > 1 else 0.0),
        weight_read_s=weight_bytes_gpu / hbm,
        kv_read_s_per_token=kv_bytes_token_gpu / hbm,
        compute_s_per_token=2 * model.params / n / (gpu.flops_s * eff.flops),
        decode_s_per_seq=comm_s_per_token,
        prefill_s_per_token=comm_s_per_token,
        swap_s_per_block=kv_bytes_token_gpu * block_size / (gpu.host_bytes_s * eff.host),
        notes=(
            f"derived: {model.name} ({model.params / 1e9:.1f}B params,"
            f" {model.kv_bytes_per_token / 1e6:.3f} MB KV/token) tensor-parallel"
            f" on {n}x {gpu.name};"
            f" efficiencies {dataclasses.asdict(eff)}"
        ),
    )


# Model shapes: the models' Hugging Face config.json files.
OPT_66B = ModelShape(
    # facebook/opt-66b config.json: num_hidden_layers 64, hidden_size 9216, num_attention_heads 72,
    # ffn_dim 36864, vocab_size 50272, tied word embeddings; fp16. Multi-head attention (KV heads =
    # heads). Our count: 65.7B parameters.
    name="opt-66b",
    layers=64,
    hidden=9216,
    heads=72,
    kv_heads=72,
    ffn=36864,
    vocab=50272,
    gated_mlp=False,
    tied_embeddings=True,
)
LLAMA_31_70B = ModelShape(
    # meta-llama/Llama-3.1-70B config.json: num_hidden_layers 80, hidden_size 8192,
    # num_attention_heads 64, num_key_value_heads 8 (GQA), intermediate_size 28672 (SwiGLU),
    # vocab_size 128256, untied lm_head; bf16. Our count: 70.6B parameters.
    name="llama-3.1-70b",
    layers=80,
    hidden=8192,
    heads=64,
    kv_heads=8,
    ffn=28672,
    vocab=128256,
    gated_mlp=True,
    tied_embeddings=False,
)

# GPUs: NVIDIA A100 Tensor Core GPU datasheet — 312 TFLOP/s dense BF16/FP16; HBM2e 2,039 GB/s
# (80GB SXM) and HBM2 1,555 GB/s (40GB SXM); NVLink 600 GB/s total = 300 GB/s per direction;
# PCIe Gen4 x16 ≈ 32 GB/s per direction. Memory as nvidia-smi reports it: 81,920 / 40,960 MiB.
A100_80GB = GPUSpec(
    name="a100-80gb",
    memory_bytes=80 * GiB,
    hbm_bytes_s=2.039e12,
    flops_s=312e12,
    link_bytes_s=300e9,
    host_bytes_s=32e9,
)
A100_40GB = GPUSpec(
    name="a100-40gb",
    memory_bytes=40 * GiB,
    hbm_bytes_s=1.555e12,
    flops_s=312e12,
    link_bytes_s=300e9,
    host_bytes_s=32e9,
)

# The paper's two setups (§6.1): OPT-66B on 4×A100-80GB and Llama-3.1-70B on 8×A100-40GB.
PROFILES: dict[str, tuple[ModelShape, GPUSpec, int]] = {
    "opt-66b-4xa100-80gb": (OPT_66B, A100_80GB, 4),
    "llama-3.1-70b-8xa100-40gb": (LLAMA_31_70B, A100_40GB, 8),
}


def get_profile(name_or_path: str | Path) -> LatencyProfile:
    """A built-in profile by name (:data:`PROFILES`), or a JSON profile file by path."""
    key = str(name_or_path)
    if key in PROFILES:
        model, gpu, n = PROFILES[key]
        return dataclasses.replace(derive_profile(model, gpu, n), name=key)
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        return LatencyProfile.load(path)
    raise ProfileError(
        f"unknown profile {key!r}: choose one of {', '.join(PROFILES)} or give a .json file"
    )
