import sys

from jshear.assets.cli import main

sys.exit(main())
