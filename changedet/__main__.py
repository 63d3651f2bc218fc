"""``python -m changedet ...``: the command line, as the ``changedet`` script runs it."""

from ._entry import main

if __name__ == "__main__":
    main(prog_name="changedet")
