"""What the tests share: one bounded wait (:mod:`support.wait`), one spy on the gateway's streams
(:mod:`support.spy`), the fixtures that start the scripted engine and a gateway in front of it
(:mod:`support.fixtures`) and the session's real vLLM engine (:mod:`support.engine`).

Importable as ``support``: pytest puts ``tests/`` on ``sys.path`` when it loads
``tests/conftest.py``, which registers the fixtures.
"""
