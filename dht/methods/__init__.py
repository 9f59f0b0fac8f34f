"""The methods the harness hosts, one module each; importing this package registers them all.

The registry keeps the order of these imports, which is the order of ``dht bench``'s rows and of the
results tables: BL1 first (the teacher of the students and of FastBERT), then the baselines, then DHT,
then the other systems of the field (dynamic layer tying, adaptive computation modules, Transformer⁻¹).
"""

# The import order is the registry's order; keep it.
# isort: off
from dht.methods.full import FullMethod
from dht.methods.distil import DistilMethod
from dht.methods.fastbert import FastBERTMethod
from dht.methods.dht import DHTMethod
from dht.methods.dlt import DLTMethod
from dht.methods.acm import ACMMethod
from dht.methods.tinv import TInvMethod
# isort: on
from dht.training.hooks import METHODS, Method, method_type, register

__all__ = ["METHODS", "ACMMethod", "DHTMethod", "DLTMethod", "DistilMethod", "FastBERTMethod", "FullMethod", "Method",
           "method_type", "register", "TInvMethod"]
