"""One home for SAM's generator parameters: the library's GENERATOR_PARAMETERS, and every face that lists them."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from medsam_monai.automatic import GENERATOR_PARAMETERS, AutomaticMaskGenerator
from medsam_monai.automatic.filters import foreground_box
from medsam_monai.bundle import everything as bundle_everything
from medsam_monai.cli import everything as cli_everything


def test_the_parameters_are_the_generators_signature():
    signature = inspect.signature(AutomaticMaskGenerator.__init__).parameters
    assert list(GENERATOR_PARAMETERS) == [n for n in signature if n not in ("self", "predictor", "output_mode")]
    for name, default in GENERATOR_PARAMETERS.items():
        assert signature[name].default == default, name
    with pytest.raises(TypeError):
        GENERATOR_PARAMETERS["points_per_side"] = 16  # type: ignore[index]


def test_the_server_requests_fields_and_defaults_are_the_librarys():
    pytest.importorskip("fastapi")
    from medsam_monai.server.models import EverythingRequest

    fields = EverythingRequest.model_fields
    assert set(GENERATOR_PARAMETERS) <= set(fields)
    for name, default in GENERATOR_PARAMETERS.items():
        assert fields[name].default == default, name
    request = EverythingRequest(slice=0)
    assert {name: getattr(request, name) for name in GENERATOR_PARAMETERS} == dict(GENERATOR_PARAMETERS)


def test_the_cli_options_are_the_librarys():
    options = {name: default for name, _, default, _ in cli_everything.GENERATOR_OPTIONS}
    assert set(options) | {"point_grids"} == set(GENERATOR_PARAMETERS)
    for name, default in options.items():
        assert default == pytest.approx(GENERATOR_PARAMETERS[name]), name
    assert cli_everything.as_options("point_grids and min_area_mm2") == "--point-grids and --min-area-mm2"


def test_the_bundle_takes_exactly_the_librarys_names():
    for name, default in GENERATOR_PARAMETERS.items():
        bundle_everything.generator_for(None, {name: default})
    with pytest.raises(ValueError, match="unknown generator setting") as error:
        bundle_everything.generator_for(None, {"output_mode": "binary_mask"})
    assert str(error.value).endswith(f"SAM's are {', '.join(GENERATOR_PARAMETERS)}")


@pytest.mark.parametrize(
    ("name", "value"),
    [("min_area_mm2", True), ("min_area_mm2", "10"), ("max_area_fraction", float("nan")), ("max_area_fraction", 2)],
)
def test_the_bundles_size_filter_check_refuses_what_the_library_refuses(name, value):
    bound = bundle_everything.SIZE_FILTER_BOUNDS[name]
    with pytest.raises(ValueError, match=rf"^{name} must be {re.escape(bound)} or null, got "):
        bundle_everything.check_size_filters(**{"min_area_mm2": None, "max_area_fraction": None, name: value})
    from medsam_monai.automatic import check_size_filters

    with pytest.raises(ValueError, match=rf"^{name} must be "):
        check_size_filters(**{name: value})


def test_foreground_box_is_the_tight_box_with_exclusive_ends():
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) > rng.choice([0.5, 0.97, 1.0])
        ys, xs = np.nonzero(mask)
        expected = None if ys.size == 0 else (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
        assert foreground_box(mask) == expected
