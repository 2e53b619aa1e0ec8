import sys

from bulkpix.cli import main

sys.exit(main())
