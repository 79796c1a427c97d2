"""Encoding: dialogs to model inputs, the dataset and its collate, the token cache, batching."""
