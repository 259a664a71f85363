"""Decoding-time defences (ROSE, Self-CD, SafeDecoding): the rules that combine several streams' logits,
the batched multi-stream engine with one KV cache, and their registry (docs/methods/decoding.md)."""
