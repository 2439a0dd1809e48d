"""Andes gateway: paces LLM streams to each reader, measures QoE, reports delivery slack."""
