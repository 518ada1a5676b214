"""Training frameworks: the Lightning callback (imported lazily; ``pip install
torch-featureviz[lightning]``)."""

__all__ = ["FeatureMonitorCallback"]


def __getattr__(name: str) -> object:
    if name == "FeatureMonitorCallback":
        from torch_featureviz.integrations.lightning import FeatureMonitorCallback

        return FeatureMonitorCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
