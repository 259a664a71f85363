"""`safetune pairs`: MPO training pairs for any language from harmful prompts with unsafe answers
(inputs.py, filter.py, manifest.py, build.py)."""
