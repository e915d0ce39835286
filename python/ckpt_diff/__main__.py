"""``python -m ckpt_diff`` and the ``ckpt-diff`` command a wheel installs: the command line
itself, every subcommand, run in this process by the extension module."""

from __future__ import annotations

import sys


def main() -> None:
    from ckpt_diff import _native

    sys.exit(_native.main(["ckpt-diff", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
