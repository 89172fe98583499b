"""Optional vector index: durable FAISS collections. faiss is imported lazily; never imports grpc."""
