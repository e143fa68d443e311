"""distil: DistilmBERT in JAX/Flax NNX."""
