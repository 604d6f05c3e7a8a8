"""Run directories: what `attnkit train` writes (config, tokenizer, checkpoints) and how every
other command loads it."""
