"""Frozen-reference passes: what a fixed model computes once on fixed data, cached on disk.

    cache.py   the key recipe and the entries (one folder per kind under the cache root, a lock per entry)
    rds.py     RDS scores of role-play examples under the role prompt and the unsafe prompt (SaRFT)
    pairs.py   parallel preference pairs as token rows and collated batches (MPO trainer and reference)
    mpo.py     the reward-gap MPO reference pass: RG_d and pooled hidden states, and RG_t for the diagnostic
    safety_layers.py  SPPFT's safety layers: per-layer N-N / N-M cosine gap, the band, its over-rejection refinement

Below training/ and evaluation/ (both read from here); it imports data/, models/, methods/, config and
storage only.
"""
