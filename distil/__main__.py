"""`python -m distil` is the `distil` command."""

from distil.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
