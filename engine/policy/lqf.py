"""Placeholder: the ``lqf`` policy is being written; this registers nothing yet."""
