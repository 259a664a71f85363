"""The per-role safety risk study (`safetune assess`): one fine-tune and evaluation per role x method,
aggregated into per-role safety costs, traits and a risk forecast."""
