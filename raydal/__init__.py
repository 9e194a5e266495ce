"""raydal: Ray-distributed active learning for image models (dynamicAL and baselines).

Python API:
    Pool                 a Parquet pool of images with stable ids
    select               distributed exact top-b selection with any registered strategy
    ActiveLoop           the resumable train -> select -> label loop (ActiveLoop.from_config)
    create_strategy, list_strategies, register_strategy
    PoolSource, list_pools, register_pool, list_oracles, register_oracle: the other seams
"""
from importlib import import_module

#: public name -> module. Imported on first use (PEP 562), so a scoring actor that unpickles
#: raydal.selection does not pay for timm, pydantic and the loop it never uses. No submodule
#: shares a name with a public attribute (the selection code is raydal.selection, the function
#: raydal.select), so importing a submodule never replaces a public name.
_API = {"ConfigError": "raydal.errors", "RunConfig": "raydal.config",
        "load_config": "raydal.config", "parse_config": "raydal.config",
        "ActiveLoop": "raydal.loop",
        "ModelSpec": "raydal.models", "create_model": "raydal.models",
        "load_checkpoint": "raydal.models", "save_checkpoint": "raydal.models",
        "Pool": "raydal.pool", "PoolSource": "raydal.pool", "list_pools": "raydal.pool",
        "register_pool": "raydal.pool",
        "list_oracles": "raydal.oracle", "register_oracle": "raydal.oracle",
        "create_strategy": "raydal.scoring", "list_strategies": "raydal.scoring",
        "register_strategy": "raydal.scoring",
        "Selection": "raydal.selection", "select": "raydal.selection",
        "InputSpec": "raydal.transforms"}


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'raydal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))


__all__ = sorted(_API)
__version__ = "0.1.0"
