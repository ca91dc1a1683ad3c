"""``nexusquant bench`` (benches/codec.py) on a few vectors: every figure is there and sane.

Speed is printed, never asserted; these checks are about what the table contains."""

from __future__ import annotations

import pytest

from nexusquant import bench

pytest.importorskip("nexusquant._core")


def test_bench_reports_both_encoders_and_the_round_trips():
    res = bench.run_bench(n=256, head_dim=64, bits_list=(2, 4), repeats=1, threads=1)
    assert [r["bits"] for r in res["rows"]] == [2, 4]
    for r in res["rows"]:
        # Three candidates include the first (the default): never worse on the same data.
        assert r["candidates_3"]["sqnr_db"] >= r["sqnr_db"] > r["scalar_sqnr_db"]
        assert r["bits_per_element"] == pytest.approx(r["bits"] + 16 / 64)
        for key in ("encode_mbs_1", "decode_mbs_1", "round_trip_mbs_1", "round_trip_mbs_1_candidates_3",
                    "scalar_round_trip_mbs_1"):
            assert r[key] > 0
        # A round trip is slower than either of its halves.
        assert r["round_trip_mbs_1"] < min(r["encode_mbs_1"], r["decode_mbs_1"])
    text = bench.format_result(res)
    assert res["candidates"] == {2: 1, 4: 1} and "the codec's defaults (candidates=1 / 1 at 2 / 4 bits)" in text
    assert "encoder with three clipping candidates" in text
    assert "defaults in this run: " in text
    assert "round trip (encode + decode), one thread" in text
    assert text.count("\n   2 ") == 3 and text.count("\n   4 ") == 3
