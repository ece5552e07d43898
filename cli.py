"""Run the gpufocus command line from a checkout: ``python cli.py fuse DIR -o out.jpg``.

The command line itself is ``gpufocus/cli.py``; installed, the same program is the
``gpufocus`` command (and ``python -m gpufocus``), both starting at
``gpufocus.__main__.main``.
"""

from gpufocus.__main__ import main

if __name__ == "__main__":
    main()
