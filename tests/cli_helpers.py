"""What the CLI tests share: run a command in-process, and check that an error is one clear line."""

from allkit.cli.main import main

OFFLINE = ["--backbone", "efficientnet_lite0", "--weights", "offline"]


def cli(args, capsys):
    """``(exit code, stdout, stderr)`` of ``allkit ARGS``."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *words):
    """Exit code 2, one line on stderr, no traceback, and each of ``words`` in it."""
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
