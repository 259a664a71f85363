"""The end-to-end demos: a paper's experiment in miniature on a model organism built here (docs/demo.md).

registry.py names them (`safetune demo [NAME]`); sarft.py and mpo.py run them; common.py holds what
both share (plan helpers, the checks table, the summary files); distribution.py tabulates many runs.
"""
