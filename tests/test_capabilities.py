"""Capabilities decoded bit by bit (contained/workbook/capabilities.py, notebook 00)."""

from contained.workbook import capabilities

FULL = "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
NO_SYS_RESOURCE = "CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n"


def test_every_bit_up_to_cap_last_cap_is_all_of_them():
    report = capabilities.report(FULL, highest=40)
    assert "CapEff 000001ffffffffff (effective): 41 of the 41 capabilities" in report
    assert "missing" not in report


def test_a_bit_dropped_from_the_bounding_set_is_named_and_explained():
    report = capabilities.report(NO_SYS_RESOURCE, highest=40)
    assert "40 of the 41" in report
    assert "missing: CAP_SYS_RESOURCE (bit 24)" in report
    assert "dropped from the bounding set" in report
    assert "all of them would be 000001ffffffffff" in report


def test_an_older_kernel_knows_fewer_capabilities():
    report = capabilities.report("CapEff:\t0000003fffffffff\nCapBnd:\t0000003fffffffff\n",
                                 highest=37)
    assert "38 of the 38" in report and "missing" not in report
    assert "CAP_BPF (Linux 5.8)" in report and "CAP_CHECKPOINT_RESTORE (Linux 5.9)" in report


def test_an_ordinary_user_has_none_in_effect():
    report = capabilities.report("CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n",
                                 highest=40)
    assert "0 of the 41" in report and "none: an ordinary user" in report


def test_in_the_bounding_set_but_not_in_effect():
    status = "CapEff:\t000001fffffffffe\nCapBnd:\t000001ffffffffff\n"
    report = capabilities.report(status, highest=40)
    assert "missing: CAP_CHOWN (bit 0): allowed by the bounding set" in report


def test_this_process_decodes_to_its_own_masks():
    found = capabilities.masks()
    report = capabilities.report()
    assert f"CapEff {found['CapEff']:016x}" in report
    table = capabilities.table()
    assert len(table.rows) == capabilities.last_cap() + 1
    assert table.rows[21][1] == "CAP_SYS_ADMIN"
