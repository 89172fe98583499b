"""What a model is: family profiles, sentence-transformers metadata and loading."""
