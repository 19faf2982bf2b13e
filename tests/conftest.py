"""Shared test settings: keep torch to one thread so tests behave the same on 2 cores."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own folder: nothing a test writes (sbi's ./sbi-logs
    tensorboard files, a default output folder) lands in the repository."""
    monkeypatch.chdir(tmp_path)


#: A two-band 32×32 simulation of 8-lens chunks: seconds per store (store and failure tests).
TINY_SIMULATION = """
name: tiny
prior:
  sigma_v: {kind: uniform, low: 180.0, high: 300.0}
  theta_E_window: [0.5, 2.0]
survey: {name: LSST, bands: [g, r], num_pixels: 32, pixel_scale: 0.2, supersampling: 1}
chunk_size: 8
"""


#: A three-band (g, r, i) 32×32 simulation of 64-lens chunks: the OOD checks' tests.
TINY_GRI_SIMULATION = """
name: tiny_gri
prior:
  sigma_v: {kind: uniform, low: 180.0, high: 300.0}
  theta_E_window: [0.5, 2.0]
survey: {name: LSST, bands: [g, r, i], num_pixels: 32, pixel_scale: 0.2, supersampling: 1}
chunk_size: 64
"""


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread (deterministic, and fair to parallel jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """The path of a YAML file holding :data:`TINY_SIMULATION`."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_SIMULATION)
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def write_ring_store(path, num=512, chunk_size=64, size=32, seed=0, ring=20.0):
    """A small store of analytic ring images (no lenstronomy): fast training data.

    Each image is a Gaussian ring of radius θ_E whose per-band brightness follows the
    redshifts, plus a σ_v-dependent central blob and unit Gaussian noise, so every
    parameter leaves a trace in the pixels. ``ring`` is the ring's peak brightness
    (0: lens galaxies without a lensed source).
    """
    import numpy as np

    from sbi_lens.config import PriorConfig, SimulationConfig, SurveyConfig
    from sbi_lens.priors import LensPrior
    from sbi_lens.store import SimulationStore

    config = SimulationConfig(
        name="rings",
        prior=PriorConfig(theta_E_window=(0.5, 2.5)),
        survey=SurveyConfig(num_pixels=size, pixel_scale=0.2, supersampling=1),
        chunk_size=chunk_size,
    )
    store = SimulationStore.create(
        path,
        config,
        num_simulations=num,
        seed=seed,
        bands=("g", "r", "i"),
        image_shape=(size, size),
        pixel_scale=0.2,
        nuisance_names=("noise_seed",),
    )
    prior = LensPrior(config.prior)
    rng = np.random.default_rng(seed)
    coordinates = (np.arange(size) - (size - 1) / 2) * 0.2
    radius = np.hypot(*np.meshgrid(coordinates, coordinates))
    for k in range(store.num_chunks):
        rows = store.layout.chunk_slice(k)
        n = rows.stop - rows.start
        theta = prior.sample((n,), generator=torch.Generator().manual_seed(seed * 1000 + k)).numpy()
        z_l, z_s, theta_e, sigma_v = (theta[:, i, None, None] for i in range(4))
        arc = np.exp(-0.5 * ((radius - theta_e) / 0.15) ** 2)
        blob = np.exp(-0.5 * (radius / 0.5) ** 2) * (sigma_v / 100) ** 2
        bands = []
        for colour in (0.5, 1.0, 1.5):
            bands.append(ring * arc * colour ** (z_s - 1) + 5 * blob * colour ** (2 * z_l))
        x = np.stack(bands, axis=1) + rng.normal(size=(n, 3, size, size))
        store.write_chunk(k, theta, x.astype(np.float32), np.zeros((n, 1), np.float32))
    return SimulationStore.open(path)


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
