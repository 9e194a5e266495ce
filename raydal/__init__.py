"""raydal: Ray-distributed active learning for image models (dynamicAL and baselines).

Python API:
    Pool                 a Parquet pool of images with stable ids
    select               distributed exact top-b selection with any registered strategy
    ActiveLoop           the resumable train -> select -> label loop
    create_strategy, list_strategies, register_strategy
"""
from raydal.config import ConfigError, RunConfig, load_config, parse_config
from raydal.loop import ActiveLoop
from raydal.models import ModelSpec, create_model, load_checkpoint, save_checkpoint
from raydal.pool import Pool
from raydal.scoring import create_strategy, list_strategies, register_strategy
from raydal.select import Selection, select
from raydal.transforms import InputSpec

__all__ = ["ActiveLoop", "ConfigError", "InputSpec", "ModelSpec", "Pool", "RunConfig",
           "Selection", "create_model", "create_strategy", "list_strategies", "load_checkpoint",
           "load_config", "parse_config", "register_strategy", "save_checkpoint", "select"]
__version__ = "0.1.0"
