"""The published MAR sizes have exactly the reference parameter counts."""
import pytest

from marjax.models.mar import count_params, mar_preset


@pytest.mark.parametrize("name, expected", [
    ("mar_base", 207_924_768), ("mar_large", 478_326_304), ("mar_huge", 942_403_104)])
def test_preset_parameter_counts(name, expected):
    # The reference reports 207.92M / 478.33M / 942.40M.
    assert count_params(mar_preset(name)) == expected
    assert count_params(mar_preset(name, scan_layers=True)) == expected  # stacked blocks: same params
    assert round(expected / 1e6, 2) == {"mar_base": 207.92, "mar_large": 478.33, "mar_huge": 942.40}[name]


def test_unknown_preset_and_field_are_named():
    with pytest.raises(ValueError, match="mar_base"):
        mar_preset("mar_tiny")
    with pytest.raises(ValueError, match="encoder_widht"):
        mar_preset("mar_base", encoder_widht=12)
