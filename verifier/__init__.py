"""A complete verifier for ReLU networks: ``verify(model, spec) -> Result``.

Importing the package is cheap; torch and onnx load on first use.
"""

__all__ = ["verify", "Result", "Status", "Config", "load_config"]


def __getattr__(name: str):
    if name == "verify":
        from verifier.api import verify

        return verify
    if name in ("Result", "Status"):
        from verifier import result

        return getattr(result, name)
    if name in ("Config", "load_config"):
        from verifier import config

        return getattr(config, name)
    raise AttributeError(name)
