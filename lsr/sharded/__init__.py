"""Sharded indexes: N plain index shards built and searched on Ray.

- :mod:`lsr.sharded.layout`: routing (document id → shard) and the ``shards.json`` manifest; no Ray.
- :mod:`lsr.sharded.ray_runtime`: start or join the Ray runtime, get results, kill actors.
- :mod:`lsr.sharded.build`: :func:`~lsr.sharded.build.build_sharded`, encoding on Ray workers into N shards.
- :mod:`lsr.sharded.search`: :class:`~lsr.sharded.search.ShardSet`, one actor per shard and a global top-k: the parts
  ``Engine.open`` assembles an engine of a sharded index from.
"""
