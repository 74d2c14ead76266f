"""``python -m matrixos.cli``: the ``matrixos`` script."""

from matrixos.cli import main

if __name__ == "__main__":  # importing this module (a doctest walk) runs nothing
    main()
