"""bench_explore.py's --arch timing, on the smallest preset (the HTTP timing runs in tests/test_explore.py's server)."""
import bench_explore


def test_arch_timing_prints_one_line_per_precision_and_T(capsys):
    assert bench_explore.main(["--arch", "tiny16", "--T", "1,2", "--reps", "1", "--max-seconds", "10", "--amp", "off"]) in (0, None)
    out = capsys.readouterr().out
    assert "tiny16: untrained Diff-AE" in out and out.count("one edit") == 2 and "float32" in out
