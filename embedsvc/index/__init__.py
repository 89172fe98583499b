"""Optional vector index: durable FAISS collections and the facade every door calls.

Owns: ``service.py`` (the facade: checks once, embeds texts through a callable the door passes),
``manager.py`` (the collections of a data directory, its lock), ``collection.py`` (one collection:
the composition of ``store.py`` items in memory and faiss, ``durability.py`` log/snapshots/replay,
``planning.py`` how a search runs), ``spec.py`` (IndexSpec, Hit), ``ann.py`` (index kinds and their
parameters), ``filters.py``/``metadata.py`` (filters and their inverted indexes), ``wal.py``/
``records.py`` (on-disk formats), ``gpu.py``, ``lock.py``; ``sparse.py`` (sparse vectors, posting
lists), ``multivector.py`` (token vectors, MaxSim), ``fusion.py`` (search modes, hybrid fusion),
``retrieval.py`` (sparse / hybrid / re-ranked search).

May import: ``embedsvc.errors``, ``embedsvc.engine.options`` (plain values; the facade's embed
options), numpy, and faiss and scipy lazily. Never grpc, protobuf (wire.py converts at the doors), the server,
the pipeline or the engine's models.
"""
