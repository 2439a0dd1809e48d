"""Placeholder: the ``andes`` policy is being written; this registers nothing yet."""
