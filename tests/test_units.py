"""contained.units: sizes as Docker prints them, limits as they were written."""

from contained.units import GIB, KIB, MIB, format_limit, format_size


def test_sizes_are_decimal_with_three_digits_as_docker_prints_them():
    assert format_size(512) == "512B"
    assert format_size(4_260_000) == "4.26MB"
    assert format_size(1_037_006) == "1.04MB"
    assert format_size(12_300) == "12.3kB"


def test_limits_are_shown_exactly_in_binary_units():
    assert format_limit(16 * MIB) == "16M"
    assert format_limit(GIB) == "1G"
    assert format_limit(512 * KIB) == "512K"
    assert format_limit(MIB + 1) == f"{MIB + 1}B"
    assert format_limit(None) == format_limit(0) == "none"
