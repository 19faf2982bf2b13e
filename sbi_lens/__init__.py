"""sbi-lens: amortized, calibrated inference of strong-lens parameters with sbi.

The public API is listed here, in one place. Names resolve lazily (PEP 562) so that
``sbi-lens --help`` and Dask workers do not pay for importing sbi and lenstronomy.
"""

from importlib import import_module

__version__ = "0.1.0"

from sbi_lens.parameters import PARAMETER_LABELS, PARAMETER_NAMES, PARAMETERS, Parameter

# name → "module" (the attribute of the same name) or "module:attribute".
_PUBLIC = {
    "DiagnosticsReport": "sbi_lens.diagnostics",
    "DistanceTable": "sbi_lens.cosmology",
    "LensPrior": "sbi_lens.priors",
    "LensResNet": "sbi_lens.nn.embedding",
    "LensSimulator": "sbi_lens.simulator",
    "ModelFolder": "sbi_lens.model_folder",
    "SimulationConfig": "sbi_lens.config",
    "SimulationStore": "sbi_lens.store",
    "SplineFlow": "sbi_lens.nn.flow",
    "TrainConfig": "sbi_lens.config",
    "diagnose": "sbi_lens.report",
    "einstein_radius": "sbi_lens.cosmology",
    "infer": "sbi_lens.inference:run_inference",
    "load_config": "sbi_lens.config",
    "load_posterior": "sbi_lens.model_folder",
    "load_train_config": "sbi_lens.config",
    "register": "sbi_lens.registry",
    "run_diagnostics": "sbi_lens.diagnostics",
    "run_simulation": "sbi_lens.parallel",
    "spline_flow": "sbi_lens.nn.flow",
    "train": "sbi_lens.training",
}

__all__ = [
    "PARAMETERS",
    "PARAMETER_LABELS",
    "PARAMETER_NAMES",
    "Parameter",
    "__version__",
    *sorted(_PUBLIC),
]


def __getattr__(name: str):
    if name in _PUBLIC:
        module, _, attribute = _PUBLIC[name].partition(":")
        value = getattr(import_module(module), attribute or name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sbi_lens' has no attribute {name!r}")


def __dir__():
    return __all__
