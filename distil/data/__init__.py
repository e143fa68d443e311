"""Data: raw text sources, token shards, MLM masking, batching and the NLI readers."""
