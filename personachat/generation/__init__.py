"""Generation: decoding options, sampling, and the incremental decoders."""
