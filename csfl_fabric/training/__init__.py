"""Local training: the sequential and cohort (``torch.func``) backends, their shared optimizer, flat params."""
