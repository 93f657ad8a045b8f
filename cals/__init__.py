"""cals: Context-Aware Lip-Sync data and models.

`cals` holds what training needs (constants, the shard format and its reader, models); the
preparation pipeline lives in the sibling package `pipeline`, the command lines in `cli`.
"""

__version__ = "0.1.0"
