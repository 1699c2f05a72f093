"""``python -m rlnas.search`` == ``rlnas-search``."""

from rlnas.search.app import main

if __name__ == "__main__":
    main()
