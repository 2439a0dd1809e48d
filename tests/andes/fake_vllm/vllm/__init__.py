"""A stand-in for vLLM in ``andes serve``'s process tests: see ``entrypoints/openai/api_server``.

Only ever on ``PYTHONPATH`` of a subprocess under test (never imported by pytest itself)."""
