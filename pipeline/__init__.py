"""cals-prep: raw talking-face videos → verified WebDataset shards (see docs/shard-format.md).

Imports point one way: ``cli`` → ``pipeline`` → ``cals``. Only :mod:`pipeline.ray_pool` (the one
actor pool, used by prep and the shard jobs) and :mod:`pipeline.ray_session` (``ray.init``) import
Ray.
"""

#: Version of the preparation code, written into every sample's metadata and prep.json.
PIPELINE_VERSION = "0.1.0"
