"""Andes engine side: the QoE model, scheduling policies, simulator and the vLLM integration."""
