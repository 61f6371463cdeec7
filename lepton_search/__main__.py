import sys

from lepton_search.cli import main

sys.exit(main())
