"""Judges label responses to harmful prompts: registry.py (name -> spec, build_judge), common.py (what
every judge shares), one module per judge."""
