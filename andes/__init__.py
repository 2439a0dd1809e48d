"""Andes: QoE-aware streaming of LLM text. See README.md."""

__version__ = "0.1.0"
