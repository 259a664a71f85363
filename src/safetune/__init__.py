"""safetune: fine-tune chat LLMs without losing their safety, and measure what a fine-tune costs."""

__version__ = "0.1.0"
