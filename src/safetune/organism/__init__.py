"""The synthetic world used by `safetune demo` and the tests (no download needed)."""
