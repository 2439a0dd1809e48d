"""Placeholder: the ``round_robin`` policy is being written; this registers nothing yet."""
