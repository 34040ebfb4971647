"""cli.py: the argparse types refuse what is out of range, the entry wrapper gives one line and an exit code,
and the one precision rule."""
import argparse
import errno

import pytest
import torch

import cli


@pytest.mark.parametrize("kind, lo, hi, good, bad", [(int, 1, None, ["1", "7"], ["0", "-1", "1.5", "x"]),
                                                     (float, -1, 1, ["-1", "0.3", "1"], ["1.01", "nan", "inf", ""])])
def test_ranged_takes_its_range_and_nothing_else(kind, lo, hi, good, bad):
    check = cli.ranged(kind, lo, hi)
    assert [check(v) for v in good] == [kind(v) for v in good]
    for v in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(v)


def test_number_list_and_one_of():
    assert cli.number_list(int, 1)("10, 20,50") == [10, 20, 50]
    for bad in (",", "10,0", "a"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.number_list(int, 1)(bad)
    assert cli.one_of("a", "b")("b") == "b"
    with pytest.raises(argparse.ArgumentTypeError):
        cli.one_of("a", "b")("c")


@pytest.mark.parametrize("raised, code, says", [(cli.UsageError("bad --x"), 2, "error: bad --x"),
                                                (OSError(errno.ENOSPC, "No space left on device", "/o/ckpt.pt"), 1, "disk is full"),
                                                (OSError(errno.EROFS, "Read-only file system", "/o"), 1, "writable --out"),
                                                (KeyboardInterrupt(), 130, "interrupted")])
def test_entry_turns_each_way_of_ending_badly_into_one_line_and_its_code(capsys, raised, code, says):
    @cli.entry
    def main():
        raise raised

    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == code and says in err and len(err.splitlines()) == 1


def test_entry_leaves_bugs_their_traceback():
    @cli.entry
    def main():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        main()


def test_one_precision_rule():
    cpu = torch.device("cpu")
    assert cli.autocast_dtype(cpu, "off") is None and cli.autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert cli.autocast_dtype(cpu, "auto") == (torch.bfloat16 if cli.native_bf16() else None)
    with pytest.raises(cli.UsageError, match="fp16 needs CUDA"):
        cli.autocast_dtype(cpu, "fp16")
    assert cli.precision(None) == "float32" and cli.precision(torch.bfloat16) == "bfloat16 autocast"


def test_compile_is_the_default_where_it_repays_its_compile_and_the_flag_always_wins():
    import torch
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    n = cli.COMPILE_MIN_IMAGES
    assert cli.compiles(None, cuda, 10) and cli.compiles(None, cpu, n) and not cli.compiles(None, cpu, n - 1)
    assert cli.compiles(None, cuda, 10, world=8) and not cli.compiles(None, cpu, 10 * n, world=2)  # gloo DDP: eager
    for flag in (True, False):
        assert all(cli.compiles(flag, d, i, w) is flag for d in (cpu, cuda) for i in (1, n) for w in (1, 2))
