"""``python -m helpers.captions ...``: the filenames <-> captions command line under its older name.

The code lives in ``helpers.captioning.filenames`` (caption files themselves in ``helpers.dataset.caption_files``);
this alias keeps command lines and scripts written for earlier versions working.
"""

from helpers.captioning.filenames import main

if __name__ == "__main__":
    raise SystemExit(main())
