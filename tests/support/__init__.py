"""What the tests share: one bounded wait, one spy on the gateway's streams, the fixtures that start
the scripted engine and a gateway in front of it. Importable as ``support`` (pytest puts ``tests/``
on ``sys.path`` for ``tests/conftest.py``; the fixtures are registered there)."""
