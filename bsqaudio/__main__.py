"""``python -m bsqaudio`` is the same as the ``bsqaudio`` command."""

from bsqaudio.cli import main

main()
