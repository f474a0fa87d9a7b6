"""``python -m visctr``: the ``visctr`` console script, for an environment where the
package is importable but not installed (``PYTHONPATH=src``, as on a lent GPU machine)."""

from visctr._entry import run

if __name__ == "__main__":
    run()
