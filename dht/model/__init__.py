"""The dynamic encoder, its execution plans and the backbones it loads."""

from dht.model.backbones import Backbone, BackboneError, resolve_backbone
from dht.model.config import EncoderConfig
from dht.model.encoder import DynamicEncoder, group_by_shape, masked_mean
from dht.model.plan import ExecutionPlan

__all__ = ["Backbone", "BackboneError", "DynamicEncoder", "EncoderConfig", "ExecutionPlan",
           "group_by_shape", "masked_mean", "resolve_backbone"]
