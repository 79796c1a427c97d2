"""Data: reading every dialog format, validating, downloading, candidates, the synthetic benchmark."""
