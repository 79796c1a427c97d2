"""Model: loading, saving, from-scratch models, LM pretraining, the heads and their loss."""
