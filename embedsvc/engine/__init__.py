"""How text becomes vectors. Never imports grpc."""
