"""Neutral core types that every layer may import: messages, params, embeddings,
the owner thread and the loop channel."""
