"""Write ``dht/cli/methods.json``, the manifest of the built-in methods' flags, from the registry.

Run ``python -m dht.cli.manifest`` after adding a method or changing an option; ``tests/test_cli.py``
fails while the manifest and the registry differ.
"""

from __future__ import annotations

import json

import dht.methods  # noqa: F401  (registers the built-in methods)
from dht.cli.flags import MANIFEST, manifest_of, registry_fields
from dht.training.hooks import METHODS


def write_manifest() -> None:
    MANIFEST.write_text(json.dumps(manifest_of(registry_fields(METHODS)), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {MANIFEST}")


if __name__ == "__main__":
    write_manifest()
