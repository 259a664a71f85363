"""The SafeDecoding safety expert (`safetune safety-expert`): the model's own refusals to harmful seed
prompts, kept by a judge, and the LoRA expert trained on them with the project's trainer."""
