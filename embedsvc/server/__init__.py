"""Transport only: gRPC servicers, error mapping, auth, health, reflection, metrics."""
