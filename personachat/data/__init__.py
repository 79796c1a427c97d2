"""Data: reading every dialog format, validating, downloading, candidates, character cards,
the synthetic benchmark."""
